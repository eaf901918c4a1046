"""Other 4-bit codes to measure NF4 against: asymmetric int4, a Lloyd-Max code, an equal-usage code.

Lesson 05 builds NF4 from normal quantiles, so that each of its 16 levels would be used equally often
on normal data. Equal use maximizes the entropy of the codes (the information they carry), not the
accuracy of the rebuilt weights; the lesson measures accuracy (MSE). This module gives the codes that
separate the two ideas, all on values already divided by their block's absmax (in [-1, 1]):

- ``equal_usage_code(scaled)``: 16 levels at equal-probability points of the data itself, with -1, 0
  and 1 kept exact: the most even use of the patterns;
- ``lloyd_max_code(scaled)``: the levels that minimize the squared error on the data (Lloyd 1982,
  Max 1960: each level the mean of the values nearest to it), with -1, 0 and 1 kept exact;
- ``normal_code(offset)``: NF4's recipe with another offset (``normal_code(NF4_OFFSET)`` is NF4);
- ``quantize_int4_asym`` / ``dequantize_int4_asym``: asymmetric int4 with a scale and a minimum per
  block (GPTQ's zero point, llama.cpp's Q4_1), 16 evenly spaced levels between the block's min and max.

``fake_quantize(w, code)`` rounds any tensor blockwise to any sorted code and returns the rebuilt
values; ``code_usage`` counts how often each level is used and ``usage_entropy`` turns that into bits.
Left out: codes fitted per tensor (they would have to be stored with it) and GPTQ's error feedback.
"""

from __future__ import annotations

import statistics

import torch

from qlora_lessons.blockwise import blockwise_absmax_scale, check_blocksize, check_float_tensor, nearest_code
from qlora_lessons.course_extra import course_import
from qlora_lessons.nf4 import NF4_OFFSET

PINNED = (-1.0, 0.0, 1.0)  # levels every code here keeps exact: a block's own absmax, and zero


def _check_code(code: torch.Tensor) -> None:
    if not isinstance(code, torch.Tensor) or code.dim() != 1 or code.numel() < 2:
        raise TypeError(f"code must be a 1-D tensor of at least 2 levels, got {getattr(code, 'shape', code)!r}")
    if not bool((code.diff() > 0).all()):
        raise ValueError("code must be sorted and without repeated levels (sort it and drop duplicates)")


def fake_quantize(w: torch.Tensor, code: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Round w blockwise to the nearest level of a sorted code and rebuild it: w_hat = code[q] * absmax_b.

    Equation: q_i = nearest level of code to w_i / absmax_b; w_hat_i = code[q_i] * absmax_b (float32).
    Shapes: w (any) -> float32 of w's shape; code (k,) sorted.
    Example: ``fake_quantize(w, nf4_code())`` equals ``dequantize_4bit(*quantize_4bit(w))`` for float32 w.
    """
    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    _check_code(code)
    absmax, scaled = blockwise_absmax_scale(w, blocksize)  # (n_blocks,), (n,)
    code = code.to(scaled.device, torch.float32)
    scale = absmax.repeat_interleave(blocksize)[: scaled.numel()]  # (n,)
    return (code[nearest_code(scaled, code)] * scale).view(w.shape)


def code_usage(w: torch.Tensor, code: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Share of the values of w that each level of a sorted code receives (blockwise absmax scaling).

    Shapes: w (any), code (k,) sorted -> (k,) float32 summing to 1.
    Example: ``code_usage(torch.randn(2**16), nf4_code()).max()`` is about 0.09, not 1/16.
    """
    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    _check_code(code)
    _, scaled = blockwise_absmax_scale(w, blocksize)
    counts = torch.bincount(nearest_code(scaled, code.to(scaled.device, torch.float32)), minlength=code.numel())
    return counts.float() / scaled.numel()


def usage_entropy(usage: torch.Tensor) -> float:
    """Entropy in bits of the code's use, -sum p log2 p: 4 bits for 16 levels used equally, less otherwise.

    Example: ``usage_entropy(torch.full((16,), 1 / 16)) -> 4.0``.
    """
    if not isinstance(usage, torch.Tensor) or usage.dim() != 1 or bool((usage < 0).any()):
        raise ValueError("usage must be a 1-D tensor of shares >= 0")
    p = usage[usage > 0].double()
    return float(-(p * p.log2()).sum())


def normal_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """NF4's construction with any offset: 8 positive and 7 negative normal quantiles, an exact zero.

    Equation: Phi^-1(linspace(offset, 0.5, 9)[:-1]), -Phi^-1(linspace(offset, 0.5, 8)[:-1]) and 0,
    sorted, divided by the largest (QLoRA section 3; bitsandbytes ``create_normal_map(offset)``).
    Shapes: () -> (16,) float32 sorted. Example: ``torch.equal(normal_code(), nf4_code()) -> True``.
    """
    if not isinstance(offset, float) or not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be a float in (0.5, 1), got {offset!r}")
    quantile = statistics.NormalDist().inv_cdf
    positive = [quantile(p) for p in torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].tolist()]
    negative = [-quantile(p) for p in torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].tolist()]
    levels = torch.tensor(positive + [0.0] + negative, dtype=torch.float32).sort().values
    return levels / levels.max()


def _check_scaled(scaled: torch.Tensor) -> torch.Tensor:
    if not isinstance(scaled, torch.Tensor) or not scaled.dtype.is_floating_point or scaled.numel() < 64:
        raise TypeError("scaled must be a float tensor of at least 64 values in [-1, 1]")
    if float(scaled.abs().max()) > 1.0:
        raise ValueError("scaled must lie in [-1, 1]: divide each block by its absmax first")
    return scaled.reshape(-1).double()


def equal_usage_code(scaled: torch.Tensor) -> torch.Tensor:
    """16 levels that split the values inside (-1, 1) into bins of equal count, with -1, 0, 1 exact.

    Equation: 6 levels at the quantiles (j + 0.5) / 6 of the negative values, 7 at (j + 0.5) / 7 of the
    positive ones (each block's own +-1 excluded), plus -1, 0 and 1: NF4's 7 / 8 split, fitted to the data.
    Shapes: scaled (n,) in [-1, 1] -> (16,) float32 sorted.
    Example: ``equal_usage_code(blockwise_absmax_scale(torch.randn(2**16), 64)[1])``.
    """
    x = _check_scaled(scaled)
    negative, positive = -x[(x < 0) & (x > -1)], x[(x > 0) & (x < 1)]
    inner = [-torch.quantile(negative, (torch.arange(6, dtype=torch.float64) + 0.5) / 6),
             torch.quantile(positive, (torch.arange(7, dtype=torch.float64) + 0.5) / 7)]
    return torch.cat([torch.tensor(PINNED, dtype=torch.float64), *inner]).sort().values.float()


def lloyd_max_code(scaled: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The 16 levels of least squared error on the data (Lloyd-Max), with -1, 0 and 1 kept exact.

    Equation: repeat: assign each value to its nearest level; move each free level to the mean of its
    values (the pinned -1, 0, 1 stay). Starts from NF4; every step lowers the MSE or keeps it.
    Shapes: scaled (n,) in [-1, 1] -> (16,) float32 sorted.
    Example: ``lloyd_max_code(blockwise_absmax_scale(torch.randn(2**16), 64)[1])``.
    """
    x = _check_scaled(scaled)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    levels = normal_code().double()
    pinned = torch.isin(levels, torch.tensor(PINNED, dtype=torch.float64))
    for _ in range(iterations):
        q = nearest_code(x, levels)
        sums = torch.zeros_like(levels).index_add_(0, q, x)
        counts = torch.bincount(q, minlength=levels.numel()).double()
        moved = torch.where(pinned | (counts == 0), levels, sums / counts.clamp(min=1))
        levels = moved.sort().values
    return levels.float()


def quantize_int4_asym(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4: per block a float16 scale and minimum, 16 evenly spaced levels from min to max.

    Equation: minimum_b = min over block, scale_b = (max_b - min_b) / 15 (both rounded to float16, as
    llama.cpp's Q4_1 stores them); q_i = round((w_i - minimum_b) / scale_b) in 0..15. Two float16
    constants per 64 weights are 4.5 bits per weight, NF4's budget with one float32 absmax.
    Shapes: w (any, n elements, n a multiple of blocksize) -> q (n,) uint8, scale and minimum (n / blocksize,).
    Example: ``q, scale, minimum = quantize_int4_asym(torch.randn(4096))`` -> 64 blocks.
    Source: llama.cpp ``quantize_row_q4_1``; GPTQ / AWQ use the same grid with an integer zero point.
    """
    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    if w.numel() % blocksize:
        raise ValueError(f"w must hold a multiple of blocksize={blocksize} values, got {w.numel()}")
    blocks = w.detach().reshape(-1, blocksize).float()  # (n_blocks, blocksize)
    minimum = blocks.amin(dim=1).half()
    scale = ((blocks.amax(dim=1) - minimum.float()) / 15).half()
    safe = scale.float().clamp(min=torch.finfo(torch.float16).tiny)  # a constant block has scale 0
    q = torch.round((blocks - minimum.float().unsqueeze(1)) / safe.unsqueeze(1)).clamp(0, 15)  # float16 rounding
    return q.to(torch.uint8).view(-1), scale, minimum


def dequantize_int4_asym(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor,
                         shape: tuple[int, ...]) -> torch.Tensor:
    """Rebuild asymmetric int4 values: w_hat_i = q_i * scale_b + minimum_b, in float32, of ``shape``.

    Shapes: q (n,) uint8, scale and minimum (n_blocks,) -> float32 ``shape``.
    Example: ``dequantize_int4_asym(*quantize_int4_asym(w), w.shape)`` is within scale / 2 of w.
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        raise TypeError(f"q must be a uint8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if scale.shape != minimum.shape or q.numel() % scale.numel():
        raise ValueError(f"q ({q.numel()} values) must split evenly into the {scale.numel()} blocks of scale/minimum")
    blocks = q.view(scale.numel(), -1).float()  # (n_blocks, blocksize)
    return (blocks * scale.float().unsqueeze(1) + minimum.float().unsqueeze(1)).view(shape)


def plot_offset_sweep(offsets: torch.Tensor, snr_db: torch.Tensor, mark: float = NF4_OFFSET):
    """Signal-to-noise ratio of ``normal_code(offset)`` against the offset, with NF4's offset marked.

    Shapes: offsets (k,), snr_db (k,) -> a figure (closed, so a notebook shows it once).
    Example: ``plot_offset_sweep(torch.linspace(0.85, 0.99, 15), snrs)``.
    """
    plt = course_import("matplotlib.pyplot")

    offsets, snr_db = torch.as_tensor(offsets, dtype=torch.float64), torch.as_tensor(snr_db, dtype=torch.float64)
    if offsets.dim() != 1 or offsets.shape != snr_db.shape:
        raise ValueError(f"offsets and snr_db must be 1-D of one length, got {tuple(offsets.shape)}, "
                         f"{tuple(snr_db.shape)}")
    fig, ax = plt.subplots(figsize=(6.4, 2.6), layout="constrained")
    ax.plot(offsets.tolist(), snr_db.tolist(), marker="o", markersize=3)
    ax.axvline(mark, color="tab:red", linewidth=0.8, linestyle="--", label=f"NF4's offset {mark}")
    ax.set(xlabel="offset (probability of the outermost level)", ylabel="SNR (dB)",
           title="normal_code(offset) on N(0, 1) data, blocks of 64")
    ax.legend(fontsize="small")
    plt.close(fig)
    return fig
