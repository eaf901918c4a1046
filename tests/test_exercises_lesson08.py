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
