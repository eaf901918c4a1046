"""Blockwise absmax scaling and nearest-level rounding: the common core of 4-bit and 8-bit quantization.

A tensor is flattened and cut into blocks of ``blocksize`` consecutive values. Each block is divided
by its absolute maximum ``absmax`` (so it lies in [-1, 1]), and each scaled value is replaced by the
index of the nearest level of a sorted code. One outlier then only coarsens its own block.
``quantize_int`` / ``dequantize_int`` are the textbook absmax integer codes (int8, int4) that lesson 05
starts from.
``nf4`` (16 levels) and ``double_quant`` (256 levels) both build on these two steps;
``quantization_error`` measures what they lose.

The arithmetic follows bitsandbytes' CPU path exactly (``backends/default/ops.py``, ``quantize_4bit``
and ``quantize_blockwise``), so that results can be compared byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_blocksize(blocksize: int, name: str = "blocksize") -> None:
    """Raise ValueError unless blocksize is one of bitsandbytes' allowed sizes, 32, 64, ..., 4096."""
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize not in BLOCKSIZES:
        raise ValueError(f"{name} must be one of {BLOCKSIZES}, got {blocksize!r}")


def check_float_tensor(x: torch.Tensor, name: str = "x") -> None:
    """Raise TypeError/ValueError unless x is a non-empty float32, bfloat16 or float16 tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); there is nothing to quantize")


def blockwise_absmax_scale(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax and the values scaled into [-1, 1], exactly as bitsandbytes' CPU path scales.

    Equation: absmax_b = max |x_i| over block b; full blocks: x_i * (1 / absmax_b) (a reciprocal, as
    bitsandbytes does), the last partial block: x_i / absmax_b; absmax below 1e-38 is raised to 1e-38
    for the division only; then clamp to [-1, 1]. All in float32.
    Shapes: x (any, n elements) -> absmax (ceil(n / blocksize),), scaled (n,).
    Example: x = [1, -2, 4, 0.5], blocksize 2 -> absmax [2, 4], scaled [0.5, -1, 1, 0.125].
    Raises ValueError if any block holds NaN or inf (its absmax is then not finite).
    """
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)  # (n_full_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).view(-1)
    if full < n:
        last = flat[full:].abs().amax()
        absmax = torch.cat([absmax, last.view(1)])
        scaled = torch.cat([scaled, flat[full:] / last.clamp(min=1e-38)])
    if not bool(torch.isfinite(absmax).all()):
        bad = int((~torch.isfinite(absmax)).nonzero()[0])
        raise ValueError(f"x holds NaN or inf (first in block {bad}, elements {bad * blocksize}..); "
                         f"quantization needs finite values")
    return absmax, scaled.clamp_(-1.0, 1.0)


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of a sorted code; a value exactly on a midpoint gets the lower code.

    Equation: index = number of float32 midpoints (code[j] + code[j+1]) / 2 strictly below the value.
    Shapes: scaled (n,), code (k,) sorted -> (n,) int64.
    Example: code [-1, 0, 1], scaled [-0.5, 0.2, 0.5] -> [0, 1, 1].
    """
    midpoints = ((code[:-1] + code[1:]) / 2).to(scaled.device)  # a CPU code table works for CUDA values too
    return torch.bucketize(scaled, midpoints, right=False)


def quantize_int(x: torch.Tensor, bits: int = 8, blocksize: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax integer quantization: the textbook int8 (or int4) code, one absmax per block.

    Equation: q_i = round(x_i * (qmax / absmax_b)), qmax = 2^(bits - 1) - 1 (127 for 8 bits, 7 for 4 bits),
    absmax_b = max |x| over block b (the whole tensor when blocksize is None); an all-zero block gives q = 0.
    torch.round sends halves to the even integer; ``nf4.quantize_4bit(quant_type="int4")`` (levels k / 7)
    sends a value on a midpoint to the lower level instead, so the two differ only on exact midpoints.
    Source: LLM.int8() (Dettmers et al. 2022), section 2 (absmax quantization).
    Shapes: x (any, n elements) -> q int8 (x's shape), absmax float32 (ceil(n / blocksize),) or (1,).
    Example: ``quantize_int(torch.tensor([0.5, -1.0, 0.25]), bits=8)`` -> q [64, -127, 32], absmax [1.0].
    """
    check_float_tensor(x)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    n = x.numel()
    if blocksize is not None and (not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 1):
        raise ValueError(f"blocksize must be a positive int or None (one block), got {blocksize!r}")
    blocksize = n if blocksize is None else blocksize
    flat = x.detach().reshape(-1).float()
    padded = torch.cat([flat, flat.new_zeros(-n % blocksize)]).view(-1, blocksize)  # (n_blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    if not bool(torch.isfinite(absmax).all()):
        raise ValueError("x holds NaN or inf; quantization needs finite values")
    qmax = 2 ** (bits - 1) - 1
    scale = torch.where(absmax > 0, qmax / absmax, torch.zeros_like(absmax)).unsqueeze(1)  # (n_blocks, 1)
    q = torch.round(padded * scale).to(torch.int8)
    return q.view(-1)[:n].view(x.shape), absmax


def dequantize_int(q: torch.Tensor, absmax: torch.Tensor, bits: int = 8, blocksize: int | None = None) -> torch.Tensor:
    """Undo ``quantize_int``: x_i = q_i * absmax_b / qmax, in float32, qmax = 2^(bits - 1) - 1.

    Shapes: q int8 (any, n elements), absmax (ceil(n / blocksize),) -> float32 of q's shape.
    Example: ``dequantize_int(torch.tensor([64, -127, 32], dtype=torch.int8), torch.tensor([1.0]))``
    -> [0.50394, -1.0, 0.25197].
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        raise TypeError(f"q must be an int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if not isinstance(absmax, torch.Tensor):
        raise TypeError(f"absmax must be a tensor, got {type(absmax).__name__}")
    n = q.numel()
    blocksize = n if blocksize is None else blocksize
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int or None (one block), got {blocksize!r}")
    if absmax.numel() != -(-n // blocksize):
        raise ValueError(f"absmax has {absmax.numel()} values; {n} values in blocks of {blocksize} need "
                         f"{-(-n // blocksize)}")
    scale = absmax.float().repeat_interleave(blocksize)[:n] / (2 ** (bits - 1) - 1)  # (n,)
    return (q.reshape(-1).float() * scale).view(q.shape)


@dataclass(frozen=True)
class QuantError:
    """How far a quantized tensor is from the original: MSE, signal-to-noise ratio and worst error."""

    mse: float
    snr_db: float
    max_abs_error: float

    def __repr__(self) -> str:
        return f"QuantError(mse={self.mse:.3e}, snr={self.snr_db:.2f} dB, max |error|={self.max_abs_error:.3e})"


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> QuantError:
    """Error of an approximation w_hat of w, computed in float64.

    Equation: mse = mean((w - w_hat)^2); snr_db = 10 log10(mean(w^2) / mse); max |w - w_hat|.
    Shapes: w, w_hat (same shape) -> scalars.
    Example: w = [1, -1], w_hat = [0.9, -1] -> mse 0.005, snr 23.01 dB, max 0.1.
    """
    if not isinstance(w, torch.Tensor) or not isinstance(w_hat, torch.Tensor):
        raise TypeError("w and w_hat must be torch tensors")
    if w.shape != w_hat.shape:
        raise ValueError(f"w and w_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    check_float_tensor(w, "w")
    w64 = w.detach().to(torch.float64, copy=True)  # a copy: squared in place below
    diff = (w_hat.detach().double() - w64).abs_()  # |w - w_hat| in float64
    max_abs_error = float(diff.max())
    mse = float(diff.square_().mean())
    signal = float(w64.square_().mean())
    snr_db = math.inf if mse == 0 else 10 * math.log10(signal / mse) if signal > 0 else -math.inf
    return QuantError(mse, snr_db, max_abs_error)
