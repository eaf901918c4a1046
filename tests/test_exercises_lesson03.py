"""qlora_lessons.exercises.lesson03: every check passes its solution and fails wrong answers."""

import pytest
import torch

from qlora_lessons.exercises import lesson03, show_solution


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (lesson03.check_low_rank_params, lesson03.solution_low_rank_params(), 1000 * 8),
        (lesson03.check_ranks_99_percent, lesson03.solution_ranks_99_percent(), 8),
        (lesson03.check_ranks_99_percent, lesson03.solution_ranks_99_percent(), 5),
        (lesson03.check_eckart_young_error, lesson03.solution_eckart_young_error(), 1.0),
        (lesson03.check_low_rank_approx, lesson03.solution_low_rank_approx, lambda W, r: W),
        (lesson03.check_low_rank_approx, lesson03.solution_low_rank_approx,
         lambda W, r: (lambda U, S, Vh: U[:, :r] @ Vh[:r])(*torch.linalg.svd(W, full_matrices=False))),
        (lesson03.check_energy_at_rank, lesson03.solution_energy_at_rank,
         lambda W, r: float(torch.linalg.svdvals(W)[:r].sum() / torch.linalg.svdvals(W).sum())),
        (lesson03.check_perturbation_growth, lesson03.solution_perturbation_growth(), 2.0),  # "like eps"
        (lesson03.check_random_effective_rank, lesson03.solution_random_effective_rank(), 10),
        (lesson03.check_random_effective_rank, lesson03.solution_random_effective_rank(), 230),
    ],
)
def test_check_passes_the_solution_and_fails_a_wrong_answer(check, solution, wrong, grades):
    grades(check, solution, wrong)


def test_the_known_answers():
    assert lesson03.solution_low_rank_params() == 16_000
    assert lesson03.solution_ranks_99_percent() == 4
    assert abs(lesson03.solution_eckart_young_error() - 5**0.5) < 1e-12


def test_a_failing_or_misshapen_function_is_reported_not_raised(capsys):
    assert lesson03.check_low_rank_approx(lambda W, r: 1 / 0) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert lesson03.check_low_rank_approx(lambda W, r: W[:, :r]) is False
    assert "shape" in capsys.readouterr().out
    assert lesson03.check_low_rank_approx(lesson03.solution_low_rank_approx(torch.eye(2), 1)) is False
    assert "no brackets" in capsys.readouterr().out


def test_solutions_can_be_shown(capsys):
    show_solution(lesson03.solution_low_rank_approx)
    assert "torch.linalg.svd" in capsys.readouterr().out


def test_the_measured_answers():
    assert abs(lesson03.solution_perturbation_growth() - 4) < 0.05  # the error rises with eps^2
    assert 120 <= lesson03.solution_random_effective_rank() <= 140
