"""qlora_lessons.exercises.lesson08: every check passes its solution and fails wrong answers."""

import pytest
import torch

from qlora_lessons.exercises import lesson08, show_solution
from qlora_lessons.memory import count_lora_parameters, model_config
from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (lesson08.check_trainable_7b, lesson08.solution_trainable_7b(), 32 * 7 * 16 * 2 * 4096),  # all square
        (lesson08.check_weight_bytes_4096, lesson08.solution_weight_bytes_4096(), 4096 * 4096 / 2 * 1.125),  # fp32
        (lesson08.check_adapter_megabytes, lesson08.solution_adapter_megabytes(), 39_976_960 * 4 / 1e6),  # float32
        (lesson08.check_qlora_forward, lesson08.solution_qlora_forward,
         lambda x, packed, state, a, b, s: x @ dequantize_4bit(packed, state).T + (x @ a.T) @ b.T),  # no scaling
        (lesson08.check_merge_target, lesson08.solution_merge_target(), "original"),
    ],
)
def test_check_passes_the_solution_and_fails_a_wrong_answer(check, solution, wrong, grades):
    grades(check, solution, wrong)


def test_the_known_answers_agree_with_the_library():
    assert lesson08.solution_trainable_7b() == count_lora_parameters(model_config("llama-7b"), 16, "all-linear")
    packed, state = quantize_4bit(torch.randn(4096, 4096) * 0.02, double_quant=True)
    stored = packed.numel() + state.absmax.numel() + 4 * state.state2.absmax.numel()
    assert stored == lesson08.solution_weight_bytes_4096()


def test_a_failing_function_or_a_bool_is_reported_not_raised(capsys):
    assert lesson08.check_qlora_forward(lambda *args: 1 / 0) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert lesson08.check_qlora_forward(3) is False
    assert lesson08.check_trainable_7b(True) is False
    assert lesson08.check_merge_target(None) is False


def test_solutions_can_be_shown(capsys):
    show_solution(lesson08.solution_qlora_forward)
    assert "dequantize_4bit" in capsys.readouterr().out


def test_the_fp4_experiment_grades_the_prediction_against_the_measurement(capsys):
    assert lesson08.check_fp4_experiment(..., ..., 0.9) is False
    assert "prediction" in capsys.readouterr().out
    assert lesson08.check_fp4_experiment(True, ..., 0.9) is False
    assert "measure" in capsys.readouterr().out
    assert lesson08.check_fp4_experiment(True, 0.88, 0.9) is True
    assert lesson08.check_fp4_experiment(False, 0.88, 0.9) is False
    assert lesson08.check_fp4_experiment(False, 0.70, 0.9) is True


def test_the_qlora_score_solution_trains_and_scores():
    from qlora_lessons.data import load_task

    score = lesson08.solution_qlora_score("fp4", load_task("train")[:8], load_task("test")[:4], steps=1)
    assert 0.0 <= score <= 1.0


def test_check_merge_kept_passes_the_solution_and_fails_a_wrong_answer(grades):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.02
    w4 = dequantize_4bit(*quantize_4bit(w, double_quant=True))
    d = torch.randn(64, 2) @ torch.randn(2, 128) * 1e-4
    solution = lesson08.solution_merge_kept([w4], [d], 32)
    grades(lambda a: lesson08.check_merge_kept(a, [w4], [d], 32), solution,
           solution + 0.2 if solution < 0.5 else solution - 0.2)
    assert lesson08.check_merge_kept(..., [w4], [d], 32) is False
