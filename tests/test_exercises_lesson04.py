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
        (lesson04.check_smallest_rank, lesson04.solution_smallest_rank(), 16),
        (lesson04.check_alpha_compensation, lesson04.solution_alpha_compensation(), "both"),
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


def test_the_smallest_rank_comes_from_the_committed_sweep():
    from qlora_lessons.lora_sweeps import load_sweeps, select, summarize

    r = lesson04.solution_smallest_rank()
    assert summarize(select(load_sweeps(), "rank", r=r)).mean >= 0.85
    assert all(summarize(select(load_sweeps(), "rank", r=s)).mean < 0.85 for s in (1, 2, 4, 8, 16) if s < r)


def test_random_b_changes_the_step0_model_and_zero_b_does_not(capsys):
    zero_b, random_b = lesson04.solution_random_b_init()
    assert zero_b == 0 < 1e-3 < random_b
    assert lesson04.check_random_b_init(zero_b, random_b) is True
    assert lesson04.check_random_b_init(random_b, zero_b) is False  # swapped: not what was measured
    assert lesson04.check_random_b_init("0", random_b) is False
