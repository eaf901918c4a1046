"""Low rank: the singular value decomposition, the best rank-r approximation, and energy captured.

LoRA's premise (Hu et al. 2021, "LoRA", section 4) is that a fine-tuning update dW has a low
"intrinsic rank": a product B A of an (m, r) and an (r, n) matrix with r << min(m, n) captures most
of it. This module gives the tools to measure that instead of assuming it:

- ``low_rank_approx(W, r)``: the best rank-r approximation, truncated SVD (Eckart-Young).
- ``low_rank_factors(W, r)``: the same approximation as factors ``B (m, r)`` and ``A (r, n)``.
- ``singular_value_energy(W)``: the fraction of ||W||_F^2 captured at each rank.
- ``effective_rank(W, energy)``: the smallest rank that captures a given fraction of it.
- ``count_low_rank_params(m, n, r)``: r (m + n) parameters instead of m n.
- ``random_matrix_like(W)``: a Gaussian matrix of the same shape and Frobenius norm, the baseline
  a low-rank spectrum is compared against.
- ``summarize_low_rank(W, r)``: the error and the parameter count of a rank-r approximation.

Plots and the rank slider are in ``lowrank_plots``. Left out: randomized SVD (the course's matrices
are small enough for the exact one) and other definitions of effective rank (e.g. the entropy-based
one of Roy and Vetterli 2007).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check_matrix(W: torch.Tensor, name: str = "W") -> torch.Tensor:
    """Check that W is a finite floating-point 2-D tensor; return it in float32 or float64 for the SVD."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__} (use torch.as_tensor({name}))")
    if W.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(W.shape)}")
    if not W.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {W.dtype} (use {name}.float())")
    if W.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(W.shape)}")
    W = W.detach().to(torch.promote_types(W.dtype, torch.float32))  # the SVD has no float16 kernels on CPU
    if not torch.isfinite(W).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return W


def _check_rank(r: int, m: int, n: int) -> None:
    if not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f"r must be an int, got {type(r).__name__}")
    if not 1 <= r <= min(m, n):
        raise ValueError(f"r must be between 1 and min(m, n) = {min(m, n)} for a ({m}, {n}) matrix, got r={r}")


def low_rank_factors(W: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``B`` and ``A`` with ``B @ A`` the best rank-r approximation of W.

    Equation: W = U diag(S) V^T (SVD, S sorted descending); B = U[:, :r] diag(S[:r]), A = V^T[:r, :].
    Shapes: W (m, n) -> B (m, r), A (r, n), in W's dtype (LoRA's names: B is (out, r), A is (r, in)).
    Example: ``B, A = low_rank_factors(torch.eye(3), 1)`` -> B (3, 1), A (1, 3), ``(B @ A).sum() == 1``.
    """
    W32 = _check_matrix(W)
    _check_rank(r, *W32.shape)
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)  # U (m, k), S (k,), Vh (k, n), k = min(m, n)
    return (U[:, :r] * S[:r]).to(W.dtype), Vh[:r].to(W.dtype)


def low_rank_approx(W: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-r approximation of W in the Frobenius (and spectral) norm: the truncated SVD.

    Equation: W_r = U[:, :r] diag(S[:r]) V^T[:r, :]; ||W - W_r||_F = sqrt(S[r]^2 + S[r+1]^2 + ...),
    and no matrix of rank <= r is closer (Eckart and Young 1936, "The approximation of one matrix by
    another of lower rank"). Shapes: W (m, n) -> (m, n), in W's dtype.
    Example: ``low_rank_approx(torch.diag(torch.tensor([3.0, 2.0, 1.0])), 2)`` -> diag(3, 2, 0).
    """
    B, A = low_rank_factors(W, r)
    return B @ A  # (m, r) @ (r, n) -> (m, n)


def singular_value_energy(W: torch.Tensor) -> torch.Tensor:
    """The fraction of the squared Frobenius norm captured by the best rank-r approximation, for each r.

    Equation: energy[r-1] = (S[0]^2 + ... + S[r-1]^2) / (S[0]^2 + ... + S[k-1]^2), since ||W||_F^2 = sum S^2.
    Shapes: W (m, n) -> (min(m, n),) float32 or float64, non-decreasing, last entry exactly 1.
    Example: ``singular_value_energy(torch.diag(torch.tensor([3.0, 1.0])))`` -> tensor([0.9, 1.0]).
    """
    W32 = _check_matrix(W)
    S = torch.linalg.svdvals(W32)  # (k,), descending
    cumulative = torch.cumsum(S**2, dim=0)
    if cumulative[-1] == 0:
        raise ValueError("W is all zeros: its energy (squared Frobenius norm) is 0, so no fraction is defined")
    return cumulative / cumulative[-1]  # x / x == 1 exactly, so the last entry is 1.0


def effective_rank(W: torch.Tensor, energy: float = 0.9) -> int:
    """The smallest rank r whose best rank-r approximation captures ``energy`` of ||W||_F^2.

    Equation: min { r : (S[0]^2 + ... + S[r-1]^2) / sum S^2 >= energy }.
    Shapes: W (m, n) -> an int in [1, min(m, n)].
    Example: for ``D = torch.diag(torch.tensor([3.0, 1.0]))`` (energies 0.9, 1.0), ``effective_rank(D, 0.8)`` -> 1
    and ``effective_rank(D, 0.95)`` -> 2.
    """
    if not isinstance(energy, (int, float)) or isinstance(energy, bool) or not 0 < energy <= 1:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    fractions = singular_value_energy(W)
    return int(torch.searchsorted(fractions, torch.tensor(float(energy), dtype=fractions.dtype)).item()) + 1


def count_low_rank_params(m: int, n: int, r: int) -> int:
    """The number of parameters of a rank-r factorization B (m, r) @ A (r, n) of an (m, n) matrix.

    Equation: m r + r n = r (m + n), against m n for the full matrix.
    Shapes: integers in, an int out.
    Example: ``count_low_rank_params(1000, 1000, 8)`` -> 16000 (1.6% of 1,000,000).
    """
    for name, value in (("m", m), ("n", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_rank(r, m, n)
    return r * (m + n)


def random_matrix_like(W: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A Gaussian random matrix with W's shape, dtype and Frobenius norm: the "no structure" baseline.

    Equation: G_ij ~ N(0, 1), then G * ||W||_F / ||G||_F. Its singular values follow the
    Marchenko-Pastur law: spread out, so it needs a high rank to capture most of its energy.
    Shapes: W (m, n) -> (m, n).
    Example: ``random_matrix_like(torch.ones(4, 4)).norm()`` -> 4.0 (= ||ones(4, 4)||_F).
    """
    W32 = _check_matrix(W)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    G = torch.randn(W32.shape, generator=torch.Generator().manual_seed(seed), dtype=W32.dtype)
    return (G * (W32.norm() / G.norm())).to(W.dtype)


@dataclass(frozen=True)
class LowRankSummary:
    """The rank-r approximation of an (m, n) matrix: its error, the energy it keeps, and its size."""

    shape: tuple[int, int]
    r: int
    relative_error: float  # ||W - W_r||_F / ||W||_F
    energy: float  # fraction of ||W||_F^2 captured, = 1 - relative_error^2
    params: int  # r (m + n)
    full_params: int  # m n

    def __repr__(self) -> str:
        m, n = self.shape
        return (
            f"rank {self.r} of a {m}x{n} matrix: relative error {self.relative_error:.3f}, "
            f"energy {self.energy:.1%}, {self.params:,} parameters instead of {self.full_params:,} "
            f"({self.params / self.full_params:.1%})"
        )


def summarize_low_rank(W: torch.Tensor, r: int) -> LowRankSummary:
    """Error, energy and parameter count of the best rank-r approximation of W.

    Equation: relative error = ||W - W_r||_F / ||W||_F = sqrt(1 - energy[r-1]); params = r (m + n).
    Shapes: W (m, n) -> a LowRankSummary.
    Example: ``summarize_low_rank(torch.diag(torch.tensor([3.0, 1.0])), 1)`` -> relative error 0.316, energy 90.0%.
    """
    W32 = _check_matrix(W)
    m, n = W32.shape
    _check_rank(r, m, n)
    fractions = singular_value_energy(W32)
    error = (W32 - low_rank_approx(W32, r)).norm() / W32.norm()
    return LowRankSummary(
        shape=(m, n),
        r=r,
        relative_error=float(error),
        energy=float(fractions[r - 1]),
        params=count_low_rank_params(m, n, r),
        full_params=m * n,
    )
