"""Exercises for 03_low_rank_svd: parameter counts, the ">99% fewer" claim, Eckart-Young, energy; and two
that ask for a prediction first, then a measurement (how the error grows off the optimum, a random matrix's rank).

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qlora_lessons.exercises import agrees, close_to, report
from qlora_lessons.lowrank import effective_rank, low_rank_approx, singular_value_energy


def _random_matrices() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(m, n, generator=generator) for m, n in ((6, 4), (5, 9), (12, 12))]


def check_low_rank_params(answer: int) -> bool:
    """How many numbers do B (1000 x 8) and A (8 x 1000) hold together, instead of W (1000 x 1000)?"""
    return report("low_rank_params", answer == solution_low_rank_params(), "count B's entries and A's entries",
                  answer=answer)


def solution_low_rank_params() -> int:
    m, n, r = 1000, 1000, 8
    return m * r + r * n  # B (m, r) plus A (r, n) = r (m + n) = 16,000, 1.6% of 1,000,000


def check_ranks_99_percent(answer: int) -> bool:
    """What is the largest rank r whose factors have more than 99% fewer parameters than a 1000 x 1000 W?"""
    hint = "more than 99% fewer means r (m + n) < 0.01 m n; is rank 8 really enough?"
    return report("ranks_99_percent", answer == solution_ranks_99_percent(), hint, answer=answer)


def solution_ranks_99_percent() -> int:
    m, n = 1000, 1000
    ranks = [r for r in range(1, min(m, n) + 1) if r * (m + n) < 0.01 * m * n]
    return max(ranks)  # 4: rank 5 saves exactly 99%, rank 8 saves 98.4%


def check_eckart_young_error(answer: float) -> bool:
    """W = diag(5, 3, 2, 1). What is ||W - W_2||_F for its best rank-2 approximation W_2?"""
    ok = close_to(answer, solution_eckart_young_error(), rel_tol=1e-4)
    return report("eckart_young_error", ok, "the error is the norm of the singular values you drop", answer=answer)


def solution_eckart_young_error() -> float:
    S = [5.0, 3.0, 2.0, 1.0]  # a diagonal matrix's singular values are its |diagonal|, sorted
    r = 2
    return math.sqrt(sum(s**2 for s in S[r:]))  # sqrt(2^2 + 1^2) = sqrt(5) = 2.236


def check_low_rank_approx(fn: Callable) -> bool:
    """Write ``fn(W, r)`` returning the best rank-r approximation of W (a torch tensor) with the SVD."""
    cases = [(W, r) for W in _random_matrices() for r in (1, 2, min(W.shape))]
    hint = "keep the r largest singular values: U[:, :r] * S[:r] @ Vh[:r] with torch.linalg.svd(W, full_matrices=False)"
    return agrees("low_rank_approx", fn, low_rank_approx, cases, hint)


def solution_low_rank_approx(W: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # U (m, k), S (k,), Vh (k, n)
    return (U[:, :r] * S[:r]) @ Vh[:r]  # (m, r) @ (r, n)


def check_energy_at_rank(fn: Callable) -> bool:
    """Write ``fn(W, r)`` returning the fraction of ||W||_F^2 that the best rank-r approximation keeps."""
    cases = [(W, r) for W in _random_matrices() for r in (1, 3)]
    hint = "sum the r largest squared singular values and divide by the sum of all of them"
    return agrees("energy_at_rank", fn, lambda W, r: singular_value_energy(W)[r - 1], cases, hint)


def solution_energy_at_rank(W: torch.Tensor, r: int) -> float:
    S = torch.linalg.svdvals(W)  # descending
    return float((S[:r] ** 2).sum() / (S**2).sum())


def check_perturbation_growth(answer: float) -> bool:
    """Predict first: move the optimal row space V[:r] by eps in a random direction; does the error above the
    Eckart-Young minimum grow like eps or like eps^2? Then measure rise(2 eps) / rise(eps) for a small eps and
    pass that ratio (2 for eps, 4 for eps^2)."""
    hint = ("at a minimum the first derivative is zero, so the error rises with the square of the move; "
            "measure rise(2 eps) / rise(eps) with eps = 0.01 in float64")
    return report("perturbation_growth", close_to(answer, solution_perturbation_growth(), abs_tol=0.3), hint,
                  answer=answer)


def solution_perturbation_growth() -> float:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(100, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 80, generator=g, dtype=torch.float64)
    M = M / 8 + 0.05 * torch.randn(100, 80, generator=g, dtype=torch.float64)  # rank 8 + noise, as in the lesson
    rows = torch.linalg.svd(M, full_matrices=False)[2][:8]  # (8, 80): the optimal row space
    D = torch.randn(8, 80, generator=g, dtype=torch.float64)
    D = D / D.norm()  # a random direction of length 1

    def error(A: torch.Tensor) -> float:  # the best B for row space A: B = M A^+
        return float((M - M @ torch.linalg.pinv(A) @ A).norm())

    rise = [error(rows + eps * D) - error(rows) for eps in (0.01, 0.02)]
    return rise[1] / rise[0]  # about 4: the error rises with eps^2


def check_random_effective_rank(answer: int) -> bool:
    """Predict first: how many ranks does a 256 x 256 matrix of Gaussian noise need for 90% of its energy?
    Then measure it with ``effective_rank(torch.randn(256, 256))``."""
    expected = solution_random_effective_rank()
    hint = "noise spreads its energy over all directions: far more than half of 256 is not right, nor a handful"
    return report("random_effective_rank", close_to(answer, expected, abs_tol=5), hint, answer=answer)


def solution_random_effective_rank() -> int:
    W = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    return effective_rank(W, 0.9)  # about 130: a quarter of the ranks would keep only about half the energy
