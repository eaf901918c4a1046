"""Double quantization: the quantization constants of a 4-bit weight, quantized again to 8 bits.

Blockwise 4-bit storage keeps one float32 ``absmax`` per block of 64 weights: 32 / 64 = 0.5 extra bits
per parameter. QLoRA (Dettmers et al. 2023, section 3, "Double Quantization") quantizes those constants
too: subtract their mean (``offset``), then store each as an 8-bit code of the signed *dynamic* map,
in blocks of 256 constants with one float32 ``absmax2`` per block. Cost: 8 / 64 + 32 / (64 * 256)
= 0.127 bits per parameter.

- ``dynamic_map``: the 256-value signed (or unsigned) dynamic data type, as bitsandbytes builds it.
- ``quantize_blockwise_8bit`` / ``dequantize_blockwise_8bit``: 8-bit blockwise quantization with
  exact nearest-code rounding (also the storage of 8-bit optimizer states, lesson 07).
- ``quantize_absmax`` / ``dequantize_absmax``: the double quantization of the constants themselves.
- ``bits_per_param`` and ``estimate_constants_memory``: what the constants cost.

Left out: stochastic rounding and the CUDA kernels. bitsandbytes' CPU 8-bit quantizer looks codes up
in a 65,536-entry table instead of rounding exactly, so on CPU a small fraction of its 8-bit codes
differ from ours (tests/test_double_quant.py measures how many).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlora_lessons.blockwise import blockwise_absmax_scale, check_blocksize, check_float_tensor, nearest_code


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 8-bit dynamic data type: 256 sorted float32 values in [-1, 1] (signed) or [0, 1] (unsigned).

    Equation: for i = 0..6, the values 10^(i - 6) * m, where m runs over the midpoints of
    linspace(0.1, 1, 2^i + 1) (signed) or linspace(0.1, 1, 2^(i+1) + 1) (unsigned), with a minus sign
    too when signed; plus 0 and 1. Small numbers get many codes, large ones few.
    Source: Dettmers 2016, "8-Bit Approximations for Parallelism in Deep Learning" (arXiv:1511.04561);
    built exactly as ``bitsandbytes.functional.create_dynamic_map(signed, 7, 8)`` does.
    Shapes: () -> (256,).
    Example: ``dynamic_map()[[0, 127, 255]] -> [-0.99296875, 0.0, 1.0]``.
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {signed!r}")
    values = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1 if signed else 2 ** (i + 1) + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0  # midpoints of the linear fraction
        values += [10 ** (i - 6) * means, -(10 ** (i - 6)) * means] if signed else [10 ** (i - 6) * means]
    return torch.cat(values).sort().values  # 2 * 127 + 2 (signed) or 254 + 2 (unsigned) values


@dataclass(frozen=True, eq=False)
class Blockwise8bitState:
    """What ``dequantize_blockwise_8bit`` needs besides the codes: per-block absmax and the code table."""

    absmax: torch.Tensor  # float32 (n_blocks,)
    code: torch.Tensor  # float32 (256,), sorted
    blocksize: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __repr__(self) -> str:
        return (f"Blockwise8bitState(shape={self.shape}, dtype={self.dtype}, blocksize={self.blocksize}, "
                f"{self.absmax.numel()} blocks, absmax {self.absmax.numel() * 4 / 1e9:.6f} GB)")


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = 256,
                            code: torch.Tensor | None = None) -> tuple[torch.Tensor, Blockwise8bitState]:
    """Quantize x to 8-bit codes of a 256-value map (default: signed dynamic), one absmax per block.

    Equation: q_i = nearest_code(x_i / absmax_b, code), absmax_b = max |x| over block b.
    Shapes: x (any) -> codes uint8 (same shape as x), state.absmax (ceil(n / blocksize),).
    Example: ``codes, state = quantize_blockwise_8bit(torch.tensor([1.0, -1.0]), blocksize=32)``
    -> codes [255, 0] (1 is the map's top value; -1 rounds to its lowest, -0.99296875).
    Source: bitsandbytes ``quantize_blockwise`` (its default torch path; its CPU C++ path uses a table).
    """
    check_float_tensor(x)
    check_blocksize(blocksize)
    code = dynamic_map() if code is None else code
    if not isinstance(code, torch.Tensor) or code.shape != (256,) or code.dtype != torch.float32:
        raise ValueError(f"code must be a float32 tensor of shape (256,), got {getattr(code, 'shape', code)}")
    if bool((code[1:] < code[:-1]).any()):
        raise ValueError("code must be sorted in ascending order (nearest-code rounding searches it)")
    absmax, scaled = blockwise_absmax_scale(x, blocksize)
    codes = nearest_code(scaled, code).to(torch.uint8).view(x.shape)
    return codes, Blockwise8bitState(absmax, code, blocksize, tuple(x.shape), x.dtype)


def dequantize_blockwise_8bit(codes: torch.Tensor, state: Blockwise8bitState) -> torch.Tensor:
    """Map 8-bit codes back to values: x_i = code[q_i] * absmax_b, in float32, cast to state.dtype.

    Shapes: codes uint8 (state.shape) -> (state.shape) tensor of state.dtype.
    Example: codes [255, 0] with absmax [2.0] -> [2.0, -1.9859375].
    """
    if not isinstance(state, Blockwise8bitState):
        raise TypeError(f"state must be a Blockwise8bitState, got {type(state).__name__}")
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    n = math.prod(state.shape)
    if codes.numel() != n:
        raise ValueError(f"codes has {codes.numel()} elements but state.shape {state.shape} needs {n}")
    scale = state.absmax.repeat_interleave(state.blocksize)[:n]  # absmax of each element's block
    return (state.code[codes.reshape(-1).long()] * scale).view(state.shape).to(state.dtype)


def quantize_absmax(absmax: torch.Tensor, blocksize2: int = 256) -> tuple[torch.Tensor, float, Blockwise8bitState]:
    """Double quantization: subtract the mean of the constants, then 8-bit dynamic codes in blocks of 256.

    Equation: offset = mean(absmax); (codes, state2) = quantize_blockwise_8bit(absmax - offset, blocksize2).
    The constants are all positive, so centring them uses the signed map's both halves.
    Shapes: absmax float32 (n_blocks,) -> codes uint8 (n_blocks,), offset float, state2.absmax
    (ceil(n_blocks / blocksize2),).
    Example: absmax [1.0, 3.0] -> offset 2.0, centred [-1, 1] -> codes [0, 255], state2.absmax [1.0].
    Source: QLoRA section 3 (Double Quantization); bitsandbytes ``quantize_4bit(compress_statistics=True)``.
    """
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32 or absmax.dim() != 1:
        raise TypeError(f"absmax must be a 1-D float32 tensor, got {getattr(absmax, 'dtype', type(absmax))}")
    offset = absmax.mean()  # float32, the same reduction bitsandbytes uses
    codes, state2 = quantize_blockwise_8bit(absmax - offset, blocksize=blocksize2)
    return codes, float(offset), state2


def dequantize_absmax(codes: torch.Tensor, offset: float, state2: Blockwise8bitState) -> torch.Tensor:
    """Rebuild the constants: absmax_i = code8[q_i] * absmax2[i // blocksize2] + offset (float32).

    Shapes: codes uint8 (n_blocks,) -> (n_blocks,) float32.
    Example: codes [0, 255], offset 2.0, absmax2 [1.0] -> [2 - 0.99296875, 3.0].
    """
    return dequantize_blockwise_8bit(codes, state2).float() + torch.tensor(offset, dtype=torch.float32)


def bits_per_param(blocksize: int = 64, double_quant: bool = False, blocksize2: int = 256) -> float:
    """Bits of storage per 4-bit weight, constants included.

    Equation: 4 + 32 / blocksize without double quantization; with it 4 + 8 / blocksize
    + 32 / (blocksize * blocksize2) (the single float32 offset per tensor is left out).
    Example: ``bits_per_param() -> 4.5``; ``bits_per_param(double_quant=True) -> 4.1270...``.
    Source: QLoRA section 3 (0.5 -> 0.127 bits per parameter at blocksize 64 and 256).
    """
    check_blocksize(blocksize)
    if not double_quant:
        return 4 + 32 / blocksize
    check_blocksize(blocksize2, "blocksize2")
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)


@dataclass(frozen=True)
class ConstantsMemory:
    """Bytes of a model's 4-bit weights and of its quantization constants."""

    n_params: int
    blocksize: int
    double_quant: bool
    weight_bytes: int
    constant_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.constant_bytes

    def __repr__(self) -> str:
        how = "double-quantized" if self.double_quant else "float32"
        return (f"ConstantsMemory({self.n_params / 1e9:.1f}B params, blocksize {self.blocksize}, {how} constants: "
                f"weights {self.weight_bytes / 1e9:.2f} GB + constants {self.constant_bytes / 1e9:.3f} GB)")


def estimate_constants_memory(n_params: int, blocksize: int = 64, double_quant: bool = False,
                              blocksize2: int = 256) -> ConstantsMemory:
    """Bytes of n_params 4-bit weights and of their constants, treating the model as one long tensor.

    Equation: weights ceil(n / 2); blocks = ceil(n / blocksize); constants 4 * blocks (float32), or with
    double quantization blocks (uint8 codes) + 4 * ceil(blocks / blocksize2) (absmax2) + 4 (offset).
    Shapes: scalars.
    Example: ``estimate_constants_memory(65 * 10**9).constant_bytes / 1e9 -> 4.0625`` (GB).
    """
    if not isinstance(n_params, int) or isinstance(n_params, bool) or n_params < 1:
        raise ValueError(f"n_params must be a positive int, got {n_params!r}")
    check_blocksize(blocksize)
    blocks = -(-n_params // blocksize)
    if double_quant:
        check_blocksize(blocksize2, "blocksize2")
        constant_bytes = blocks + 4 * -(-blocks // blocksize2) + 4
    else:
        constant_bytes = 4 * blocks
    return ConstantsMemory(n_params, blocksize, double_quant, -(-n_params // 2), constant_bytes)
