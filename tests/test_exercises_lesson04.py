"""qlora_lessons.exercises.lesson04: every check passes its solution and fails wrong answers."""

import pytest

from qlora_lessons.exercises import lesson04, show_solution


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (lesson04.check_llama7b_lora_params, lesson04.solution_llama7b_lora_params(), 32 * 8 * (4096 + 4096)),
        (lesson04.check_adapter_bytes, lesson04.solution_adapter_bytes(), lesson04.solution_llama7b_lora_params()),
        (lesson04.check_lora_forward, lesson04.solution_lora_forward,
         lambda x, W0, A, B, alpha: x @ W0.T + alpha * x @ A.T @ B.T),  # forgot to divide by r
        (lesson04.check_lora_forward, lesson04.solution_lora_forward, lambda x, W0, A, B, alpha: x @ W0.T),
        (lesson04.check_merge, lesson04.solution_merge, lambda W0, A, B, alpha: W0 + (alpha / A.shape[0]) * A.T @ B.T),
        (lesson04.check_merge, lesson04.solution_merge, lambda W0, A, B, alpha: W0 + B @ A),
    ],
)
def test_check_passes_the_solution_and_fails_a_wrong_answer(check, solution, wrong, grades):
    grades(check, solution, wrong)


def test_the_known_answers():
    assert lesson04.solution_llama7b_lora_params() == 4_194_304  # 32 layers x 2 matrices x 8 x 8192
    assert lesson04.solution_adapter_bytes() == 8_388_608


def test_solutions_can_be_shown(capsys):
    show_solution(lesson04.solution_merge)
    assert "B @ A" in capsys.readouterr().out
