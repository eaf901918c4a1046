"""Pictures of low rank: a singular-value spectrum against random, a rank slider, a sample image.

- ``plot_spectrum(W)``: the singular values of W and of a random matrix of the same shape and
  Frobenius norm, and the energy each captures at every rank. A low-rank matrix puts its energy in
  the first few singular values; the random one spreads it out.
- ``plot_low_rank(W, ranks)``: W next to its best rank-r approximations, with their errors.
- ``plot_energy_by_layer(groups)``: the energy captured at each rank by groups of matrices (the
  update of every q_proj of a model, every v_proj, ...), against random matrices of the same shapes.
- ``rank_slider(W)``: an ipywidgets slider over r that shows W next to its best rank-r
  approximation, with the relative error and the parameter count.
- ``sample_image(size)``: a grayscale photograph (matplotlib's bundled sample of Grace Hopper) as a
  2-D tensor, so that the slider has an image to compress offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from qlora_lessons.course_extra import course_import
from qlora_lessons.lowrank import (
    LowRankSummary,
    _check_matrix,
    count_low_rank_params,
    random_matrix_like,
    singular_value_energy,
)

if TYPE_CHECKING:  # matplotlib and ipywidgets are imported when a picture is drawn, not when the course is imported
    import ipywidgets
    from matplotlib.figure import Figure


def plot_spectrum(W: torch.Tensor, label: str = "W", max_rank: int | None = None, seed: int = 0) -> Figure:
    """Plot the singular values of W and the energy captured per rank, against a random matrix like W.

    Equation: energy(r) = (S[0]^2 + ... + S[r-1]^2) / ||W||_F^2; the reference is
    ``random_matrix_like(W, seed)`` (same shape and Frobenius norm, Gaussian entries).
    Shapes: W (m, n); the plots run over ranks 1..max_rank (default min(m, n)).
    Example: ``plot_spectrum(dW, label="dW q_proj", max_rank=64)`` -> a figure with two panels.
    Returns the matplotlib Figure (closed, so a notebook shows it once, as the cell's value).
    """
    plt = course_import("matplotlib.pyplot")

    W32 = _check_matrix(W)
    k = min(W32.shape)
    max_rank = k if max_rank is None else max_rank
    if not isinstance(max_rank, int) or isinstance(max_rank, bool) or not 1 <= max_rank <= k:
        raise ValueError(f"max_rank must be an int between 1 and min(m, n) = {k}, got {max_rank!r}")
    reference = random_matrix_like(W32, seed=seed)
    ranks = range(1, max_rank + 1)
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    for matrix, name, style in ((W32, label, "-"), (reference, "random, same shape and norm", "--")):
        S = torch.linalg.svdvals(matrix)[:max_rank]
        ax_s.plot(ranks, S.numpy(), style, label=name)
        ax_e.plot(ranks, singular_value_energy(matrix)[:max_rank].numpy(), style, label=name)
    ax_s.set(yscale="log", xlabel="index i", ylabel="singular value S[i]", title="spectrum")
    ax_e.set(xlabel="rank r", ylabel="energy captured", ylim=(0, 1.02), title="energy of the best rank-r")
    ax_e.axhline(0.9, color="grey", linewidth=0.5)
    ax_s.legend(fontsize="small")
    plt.close(fig)
    return fig


def plot_energy_by_layer(groups: dict[str, Sequence[torch.Tensor]], max_rank: int = 64, seed: int = 0) -> Figure:
    """Plot the energy captured at ranks 1..max_rank, averaged over each group of matrices, against random.

    Equation: energy(r) = (S[0]^2 + ... + S[r-1]^2) / ||W||_F^2, the mean over a group's matrices; the
    black lines are ``random_matrix_like(W, seed)`` for each distinct shape, dashed, dotted, dash-dotted
    (a shape and its transpose have the same singular values, so they share a line; up to four shapes).
    Shapes: each matrix (m, n) with min(m, n) >= max_rank.
    Example: ``plot_energy_by_layer({"q_proj": [dW0, dW1], "down_proj": [dW2, dW3]}, max_rank=64)``.
    Returns the matplotlib Figure (closed, so a notebook shows it once, as the cell's value).
    """
    plt = course_import("matplotlib.pyplot")

    if not isinstance(groups, dict) or not groups or not all(len(matrices) for matrices in groups.values()):
        raise ValueError("groups must be a non-empty dict of name -> non-empty list of matrices")
    matrices = {name: [_check_matrix(W, f"groups[{name!r}]") for W in group] for name, group in groups.items()}
    smallest = min(min(W.shape) for group in matrices.values() for W in group)
    if not isinstance(max_rank, int) or isinstance(max_rank, bool) or not 1 <= max_rank <= smallest:
        raise ValueError(f"max_rank must be an int between 1 and the smallest min(m, n) = {smallest}, got {max_rank!r}")
    ranks = range(1, max_rank + 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    for name, group in matrices.items():
        mean = torch.stack([singular_value_energy(W)[:max_rank].float() for W in group]).mean(0)
        ax.plot(ranks, mean.numpy(), label=name)
    shapes = {tuple(sorted(W.shape)): W for group in matrices.values() for W in group}  # one example per shape
    if len(shapes) > 4:
        raise ValueError(f"groups may hold at most 4 distinct matrix shapes (one line style each), got {len(shapes)}")
    for (m, n), W, style in zip(shapes, shapes.values(), ("--", ":", "-.", (0, (5, 1, 1, 1)))):  # one style per shape
        ax.plot(ranks, singular_value_energy(random_matrix_like(W, seed=seed))[:max_rank].numpy(), linestyle=style,
                color="black", linewidth=1.2, label=f"random {m}x{n}")
    ax.axhline(0.9, color="grey", linewidth=0.5)
    ax.set(xlabel="rank r", ylabel="energy captured", ylim=(0, 1.02), title="energy of the best rank-r")
    ax.legend(fontsize="small", ncol=2, loc="lower right")
    plt.close(fig)
    return fig


def _picture_row(panels: list[tuple[torch.Tensor, str]], W32: torch.Tensor) -> Figure:
    """One row of matrices drawn as images on W's colour scale (gray if W >= 0, else red-blue around 0)."""
    plt = course_import("matplotlib.pyplot")

    signed = float(W32.min()) < 0
    vmax = float(W32.abs().max())
    vmin = -vmax if signed else float(W32.min())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels) + 0.5, 2.7), layout="constrained",
                             squeeze=False)
    for ax, (matrix, name) in zip(axes[0], panels, strict=True):
        ax.imshow(matrix.numpy(), cmap="RdBu_r" if signed else "gray", vmin=vmin, vmax=vmax)
        ax.set(title=name, xticks=[], yticks=[])
    plt.close(fig)
    return fig


def _check_ranks(ranks: tuple, k: int, name: str) -> None:
    if not ranks:
        raise ValueError(f"{name} must not be empty")
    for r in ranks:
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= k:
            raise ValueError(f"{name} must be an int between 1 and min(m, n) = {k}, got {r!r}")


def plot_low_rank(W: torch.Tensor, ranks: tuple[int, ...] = (1, 4, 16), title: str = "W") -> Figure:
    """Draw W next to its best rank-r approximations, each titled with its relative error.

    Equation: W_r = U[:, :r] diag(S[:r]) V^T[:r, :]; error = ||W - W_r||_F / ||W||_F.
    Shapes: W (m, n); every r in ``ranks`` between 1 and min(m, n).
    Example: ``plot_low_rank(sample_image(128), ranks=(1, 8, 32), title="photo")`` -> a figure with 4 panels.
    Returns the matplotlib Figure (closed, so a notebook shows it once, as the cell's value): the static
    picture for readers whose viewer does not run widgets (GitHub, nbviewer).
    """
    W32 = _check_matrix(W)
    _check_ranks(tuple(ranks), min(W32.shape), "ranks")
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)  # once for all ranks
    panels = [(W32, title)]
    for r in ranks:
        W_r = (U[:, :r] * S[:r]) @ Vh[:r]  # (m, r) @ (r, n) -> (m, n)
        panels.append((W_r, f"rank {r}: error {float((W32 - W_r).norm() / W32.norm()):.2f}"))
    return _picture_row(panels, W32)


def rank_slider(W: torch.Tensor, max_rank: int | None = None, title: str = "W") -> ipywidgets.VBox:
    """An interactive slider over r showing W and its best rank-r approximation side by side.

    Equation: W_r = U[:, :r] diag(S[:r]) V^T[:r, :], with the SVD computed once; the caption is
    ``LowRankSummary`` (relative error ||W - W_r||_F / ||W||_F and r (m + n) parameters).
    Shapes: W (m, n) (a matrix or a grayscale image); r runs over 1..max_rank (default min(m, n)).
    Example: ``rank_slider(sample_image(128), max_rank=64, title="photo")`` -> a widget to display.
    Returns an ipywidgets VBox: ``.children`` are the slider, the caption (HTML) and the pictures.
    """
    widgets = course_import("ipywidgets")
    display = course_import("IPython.display").display

    W32 = _check_matrix(W)
    m, n = W32.shape
    max_rank = min(m, n) if max_rank is None else max_rank
    _check_ranks((max_rank,), min(m, n), "max_rank")
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)  # once; each rank is then a cheap product
    energy = torch.cumsum(S**2, 0) / (S**2).sum()

    slider = widgets.IntSlider(value=min(8, max_rank), min=1, max=max_rank, description="rank r",
                               continuous_update=False)
    caption = widgets.HTML()
    pictures = widgets.Output()

    def show(r: int) -> None:
        W_r = (U[:, :r] * S[:r]) @ Vh[:r]  # (m, r) @ (r, n) -> (m, n)
        summary = LowRankSummary(shape=(m, n), r=r, relative_error=float((W32 - W_r).norm() / W32.norm()),
                                 energy=float(energy[r - 1]), params=count_low_rank_params(m, n, r),
                                 full_params=m * n)
        caption.value = repr(summary)
        pictures.clear_output(wait=True)
        with pictures:
            display(_picture_row([(W32, title), (W_r, f"best rank-{r} approximation")], W32))

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return widgets.VBox([slider, caption, pictures])


def sample_image(size: int = 128) -> torch.Tensor:
    """A grayscale photograph as a (size, size) float32 tensor in [0, 1], to compress with low rank.

    Equation: gray = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601 luma), centre-cropped to a square and
    resized by area averaging. The photograph is matplotlib's bundled ``grace_hopper.jpg``
    (``matplotlib.cbook.get_sample_data``), so no download is needed.
    Shapes: -> (size, size).
    Example: ``sample_image(64).shape`` -> torch.Size([64, 64]).
    """
    cbook = course_import("matplotlib.cbook")
    imread = course_import("matplotlib.image").imread

    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 512:
        raise ValueError(f"size must be an int between 8 and 512 (the photograph is 512 pixels wide), got {size!r}")
    rgb = torch.tensor(imread(cbook.get_sample_data("grace_hopper.jpg")), dtype=torch.float32) / 255  # (H, W, 3)
    gray = rgb[..., :3] @ torch.tensor([0.299, 0.587, 0.114])  # (H, W, 3) -> (H, W)
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = gray[top : top + side, left : left + side]  # (side, side)
    resized = torch.nn.functional.interpolate(square[None, None], size=(size, size), mode="area")[0, 0]
    return resized
