"""The LoRA paper's own analysis of trained adapters (Hu et al. 2021, section 7), for any model.

- ``subspace_similarity(A1, A2, i, j)``: how much of the top-i directions of one adapter's A lie in the
  top-j directions of another's (section 7.2, equation 4):

      phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j)   in [0, 1],

  U the right-singular vectors of A (r, in), as columns (in, r). 1: one subspace contains the other;
  0: they are orthogonal. Two random subspaces of dimensions i <= j in d dimensions give j / d on average.
- ``similarity_grid(A1, A2)``: phi for every i <= r1, j <= r2, the grid of the paper's Figure 3.
- ``measure_amplification(dW, W0, r)``: how much dW amplifies directions of W0 (section 7.3, Table 7):
  project W0 on dW's top-r singular directions, ||U^T W0 V||_F, and compare with W0's own top-r
  directions and with random ones; the amplification factor is ||dW||_F / ||U^T W0 V||_F.
- ``plot_subspace_similarity(grid)``: the grid as a heat map.

Left out: the paper's comparison over random seeds (Figure 4) and over layers 1 to 96 of GPT-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from qlora_lessons.course_extra import course_import
from qlora_lessons.lowrank import _check_matrix, _check_rank

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _right_directions(A: torch.Tensor, name: str) -> torch.Tensor:
    """The right-singular vectors of A (r, in) as columns, (in, r), largest singular value first."""
    A64 = _check_matrix(A, name).double()
    return torch.linalg.svd(A64, full_matrices=False)[2].T  # Vh (r, in) -> (in, r)


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) (LoRA, section 7.2, equation 4).

    Shapes: A1 (r1, in), A2 (r2, in) with the same ``in``; 1 <= i <= r1, 1 <= j <= r2.
    Example: ``subspace_similarity(A, A, 2, 2)`` -> 1.0; two random A (1, 256) -> about 1/256.
    """
    U1, U2 = _right_directions(A1, "A1"), _right_directions(A2, "A2")
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"A1 and A2 must have the same number of columns (in_features), got {U1.shape[0]} "
                         f"and {U2.shape[0]}")
    _check_rank(i, U1.shape[0], U1.shape[1])
    _check_rank(j, U2.shape[0], U2.shape[1])
    return float((U1[:, :i].T @ U2[:, :j]).pow(2).sum() / min(i, j))


def similarity_grid(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """phi(A1, A2, i, j) for i = 1..r1 (rows) and j = 1..r2 (columns), the paper's Figure 3.

    Shapes: A1 (r1, in), A2 (r2, in) -> (r1, r2), float64.
    Example: ``similarity_grid(A, A)`` has ones on its diagonal.
    """
    U1, U2 = _right_directions(A1, "A1"), _right_directions(A2, "A2")
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"A1 and A2 must have the same number of columns, got {U1.shape[0]} and {U2.shape[0]}")
    overlaps = (U1.T @ U2).pow(2)  # (r1, r2): squared cosines between single directions
    cumulative = overlaps.cumsum(0).cumsum(1)  # [i-1, j-1] = ||U1[:, :i]^T U2[:, :j]||_F^2
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return cumulative / torch.minimum(i, j)


@dataclass(frozen=True)
class Amplification:
    """W0 projected on three r-dimensional pairs of directions, and dW's norm (LoRA, Table 7).

    ``on_dW``: ||U^T W0 V||_F with U, V the top-r singular vectors of dW; ``on_W0``: the same with W0's own
    top-r vectors (= sqrt(S0[0]^2 + ... + S0[r-1]^2)); ``on_random``: with random orthonormal U, V;
    ``factor`` = ||dW||_F / on_dW.
    """

    r: int
    dW_norm: float
    on_dW: float
    on_W0: float
    on_random: float

    @property
    def factor(self) -> float:
        return self.dW_norm / self.on_dW

    def __repr__(self) -> str:
        return (f"r={self.r}: ||U^T W0 V||_F on dW's directions {self.on_dW:.3f}, on W0's own {self.on_W0:.3f}, "
                f"on random ones {self.on_random:.3f}; ||dW||_F {self.dW_norm:.3f}, amplification {self.factor:.1f}")


def measure_amplification(dW: torch.Tensor, W0: torch.Tensor, r: int, seed: int = 0) -> Amplification:
    """How strongly dW amplifies directions of W0 (LoRA, section 7.3).

    Equation: U, V = top-r left and right singular vectors of dW; on_dW = ||U^T W0 V||_F; factor = ||dW||_F / on_dW.
    Shapes: dW and W0 (out, in), 1 <= r <= min(out, in).
    Example: ``measure_amplification(dW, W0, 4).factor`` -> about 21.5 for GPT-3's Wq at r = 4 in the paper.
    """
    dW64, W064 = _check_matrix(dW, "dW").double(), _check_matrix(W0, "W0").double()
    if dW64.shape != W064.shape:
        raise ValueError(f"dW and W0 must have the same shape, got {tuple(dW64.shape)} and {tuple(W064.shape)}")
    _check_rank(r, *W064.shape)
    U, _, Vh = torch.linalg.svd(dW64, full_matrices=False)
    S0 = torch.linalg.svdvals(W064)
    g = torch.Generator().manual_seed(seed)
    Q_left = torch.linalg.qr(torch.randn(W064.shape[0], r, generator=g, dtype=torch.float64))[0]  # (out, r)
    Q_right = torch.linalg.qr(torch.randn(W064.shape[1], r, generator=g, dtype=torch.float64))[0]  # (in, r)
    return Amplification(r=r, dW_norm=float(dW64.norm()), on_dW=float((U[:, :r].T @ W064 @ Vh[:r].T).norm()),
                         on_W0=float(S0[:r].pow(2).sum().sqrt()), on_random=float((Q_left.T @ W064 @ Q_right).norm()))


def plot_subspace_similarity(grid: torch.Tensor, labels: tuple[str, str] = ("A1", "A2"),
                             title: str = "subspace similarity") -> Figure:
    """The grid of ``similarity_grid`` as a heat map: i down, j across, phi from 0 (dark) to 1 (light).

    Example: ``plot_subspace_similarity(similarity_grid(A8, A64), ("A, r=8", "A, r=64"))``.
    """
    plt = course_import("matplotlib.pyplot")

    if not isinstance(grid, torch.Tensor) or grid.ndim != 2:
        raise ValueError(f"grid must be a 2-D tensor from similarity_grid, got {type(grid).__name__}")
    fig, ax = plt.subplots(figsize=(6.5, 2.4), layout="constrained")
    image = ax.imshow(grid.numpy(), vmin=0, vmax=1, aspect="auto", cmap="viridis",
                      extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
    ax.set(xlabel=f"j (top-j directions of {labels[1]})", ylabel=f"i ({labels[0]})", title=title)
    fig.colorbar(image, ax=ax, label="phi")
    plt.close(fig)
    return fig
