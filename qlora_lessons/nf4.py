"""4-bit NormalFloat (NF4) by hand: the code, blockwise absmax scaling, nearest-level rounding, packing.

A weight tensor is cut into blocks of ``blocksize`` consecutive values (64 in QLoRA). Each block is
divided by its largest magnitude ``absmax`` so that it lies in [-1, 1]; each value is replaced by the
index (0..15) of the nearest of 16 code levels; two indices are packed per byte. To dequantize:
w = code[q] * absmax. Three codes: NF4 (normal quantiles), FP4 (a tiny float) and INT4 (integers).

This is the same computation as ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` on CPU,
byte for byte (tests/test_nf4.py): float32 arithmetic, the reciprocal of absmax for full blocks, float32
midpoints with a value exactly on a midpoint going to the lower level, the first value of each pair in
the high nibble. Double quantization of the constants is in ``double_quant``; the conversion to and from
bitsandbytes' ``QuantState`` in ``nf4_bitsandbytes``; error metrics, plots and the widget in ``nf4_plots``.

Left out: stochastic rounding, the CUDA kernels and the 4-bit matrix multiplication.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from qlora_lessons.blockwise import blockwise_absmax_scale, check_blocksize, check_float_tensor, nearest_code
from qlora_lessons.nf4_kernels import dequantize_packed, level_table, quantize_packed

if TYPE_CHECKING:  # double_quant comes after nf4 in lesson order: a type name only
    from qlora_lessons.double_quant import Blockwise8bitState

QUANT_TYPES = ("nf4", "fp4", "int4")
NF4_OFFSET = 0.9677083  # bitsandbytes' create_normal_map default: (1 - 1/30 + 1 - 1/32) / 2, cut to 7 decimals


def nf4_code() -> torch.Tensor:
    """The 16 NF4 levels: normal quantiles, one exact zero, scaled so the largest is 1.

    Equation: 8 positive levels Phi^-1(p) for p = linspace(offset, 0.5, 9)[:-1], 7 negative levels
    -Phi^-1(p) for p = linspace(offset, 0.5, 8)[:-1], and 0; sorted; divided by the largest.
    offset = 0.9677083, the mean of 1 - 1/30 and 1 - 1/32 written with 7 decimals (the exact mean is a
    different float32 and gives a different table). Phi^-1 is the standard normal quantile function.
    Source: QLoRA (Dettmers et al. 2023) section 3; bitsandbytes ``create_normal_map(0.9677083)``.
    Shapes: () -> (16,) float32, sorted; the index is the 4-bit code.
    Example: ``nf4_code()[[0, 7, 15]] -> [-1.0, 0.0, 1.0]``.
    """
    quantile = statistics.NormalDist().inv_cdf
    positive = [quantile(p) for p in torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float32)[:-1].tolist()]
    negative = [-quantile(p) for p in torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float32)[:-1].tolist()]
    levels = torch.tensor(positive + [0.0] + negative, dtype=torch.float32).sort().values
    return levels / levels.max()


def fp4_code() -> torch.Tensor:
    """The 16 FP4 levels (1 sign, 2 exponent, 1 mantissa bit) in bit order, scaled so the largest is 1.

    Equation: bits s e1 e0 m; e = 0 gives m * 0.0625 (zero or the one subnormal); e = 1, 2, 3 give
    2^(4 - e) * (1 + m / 2), i.e. 8, 12, 4, 6, 2, 3; the sign bit negates; all divided by 12.
    Source: bitsandbytes ``get_4bit_type("fp4")`` (its unusual exponent order is kept so codes match).
    Shapes: () -> (16,) float32, NOT sorted: index = bit pattern.
    Example: ``fp4_code()[[3, 11]] -> [1.0, -1.0]`` (0b0011 and 0b1011).
    """
    magnitudes = []
    for e in range(4):
        for m in range(2):
            magnitudes.append(m * 0.0625 if e == 0 else 2.0 ** (4 - e) * (1 + m / 2))
    levels = torch.tensor(magnitudes + [-v for v in magnitudes], dtype=torch.float32)
    return levels.div_(levels.abs().max())


def int4_code() -> torch.Tensor:
    """The 16 INT4 levels: symmetric absmax integers -7..7 divided by 7, sign-magnitude bit order.

    Equation: pattern p = 0..7 -> (7 - p) / 7, p = 8..15 -> -(p - 8) / 7, i.e. [7, 6, .., 0, -0, -1, .., -7] / 7.
    Two patterns mean zero (+0 and -0), so INT4 uses 15 distinct levels, evenly spaced by 1/7.
    Source: bitsandbytes ``get_4bit_type("int4")``.
    Shapes: () -> (16,) float32, NOT sorted.
    Example: ``int4_code()[[0, 7, 15]] -> [1.0, 0.0, -1.0]``.
    """
    levels = torch.tensor([7.0 - b for b in range(8)] + [-float(b) for b in range(8)], dtype=torch.float32)
    return levels.div_(7.0)


CODE_BUILDERS = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}


def code_for(quant_type: str) -> torch.Tensor:
    """The 16-level code of ``quant_type`` ("nf4", "fp4" or "int4"), indexed by the 4-bit pattern."""
    if quant_type not in CODE_BUILDERS:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    return CODE_BUILDERS[quant_type]()


@dataclass(frozen=True, eq=False)
class QuantState:
    """Everything besides the packed codes that ``dequantize_4bit`` needs (bitsandbytes' QuantState).

    ``absmax`` is float32 (n_blocks,), or, with double quantization, uint8 8-bit codes of
    ``absmax - offset`` whose own scales are in ``state2`` (see ``double_quant``).
    """

    absmax: torch.Tensor
    blocksize: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    quant_type: str
    code: torch.Tensor  # float32 (16,), index = 4-bit pattern
    offset: float | None = None
    state2: Blockwise8bitState | None = None

    @property
    def nested(self) -> bool:
        """True when the constants are double-quantized."""
        return self.state2 is not None

    @property
    def constant_bytes(self) -> int:
        """Bytes of the quantization constants (absmax, and absmax2 and offset when nested)."""
        own = self.absmax.numel() * self.absmax.element_size()
        return own if self.state2 is None else own + 4 * self.state2.absmax.numel() + 4

    def __repr__(self) -> str:
        n = math.prod(self.shape)
        nested = f", double-quantized (offset {self.offset:.4f})" if self.nested else ""
        return (f"QuantState({self.quant_type}, shape={self.shape}, dtype={self.dtype}, blocksize={self.blocksize}, "
                f"{self.absmax.numel()} blocks{nested}: codes {(n + 1) // 2 / 1e9:.6f} GB + "
                f"constants {self.constant_bytes / 1e9:.6f} GB)")


def pack_4bit(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte, the first of each pair in the high nibble; odd counts pad with 0.

    Equation: byte_j = q[2j] * 16 + q[2j + 1].
    Shapes: q (n,) integers in 0..15 -> (ceil(n / 2),) uint8.
    Example: ``pack_4bit(torch.tensor([1, 2, 15])) -> [0x12, 0xF0]`` = [18, 240].
    """
    if not isinstance(q, torch.Tensor) or q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor of 4-bit codes, got {getattr(q, 'dtype', type(q).__name__)}")
    q = q.reshape(-1)
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"q must hold codes in 0..15, got values in {int(q.min())}..{int(q.max())}")
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    return (q[0::2] * 16 + q[1::2]).to(torch.uint8)


def unpack_4bit(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Split each byte into its two 4-bit codes, high nibble first; keep the first n (default all).

    Equation: q[2j] = byte_j >> 4, q[2j + 1] = byte_j & 15.
    Shapes: packed (m,) uint8 -> (n,) uint8 with n <= 2m.
    Example: ``unpack_4bit(torch.tensor([18, 240], dtype=torch.uint8), 3) -> [1, 2, 15]``.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    packed = packed.reshape(-1)
    n = 2 * packed.numel() if n is None else n
    if not isinstance(n, int) or not 2 * packed.numel() - 1 <= n <= 2 * packed.numel():
        raise ValueError(f"n must be {2 * packed.numel() - 1} or {2 * packed.numel()} for {packed.numel()} bytes, "
                         f"got {n!r}")
    return torch.stack([packed >> 4, packed & 15], dim=1).view(-1)[:n]  # (m, 2) -> (2m,)


def nearest_4bit(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The 4-bit pattern of the nearest code level for each scaled value, found by binary search.

    Equation: k = number of float32 midpoints between sorted levels strictly below x (a value on a
    midpoint goes to the lower level); pattern = the bit order of the k-th smallest level.
    Shapes: scaled (n,) float32 in [-1, 1], code (16,) -> (n,) uint8.
    Example: ``nearest_4bit(torch.tensor([-1.0, 0.03, 0.05, 1.0]), nf4_code()) -> [0, 7, 8, 15]``.
    """
    levels, order = code.sort(stable=True)  # order[k] = bit pattern of the k-th smallest level
    return order[nearest_code(scaled, levels)].to(torch.uint8)


def quantize_4bit(w: torch.Tensor, blocksize: int = 64, quant_type: str = "nf4",
                  double_quant: bool = False) -> tuple[torch.Tensor, QuantState]:
    """Quantize w to packed 4-bit codes, blockwise: q_i = nearest level of code to w_i / absmax_b.

    Equation: absmax_b = max |w| over block b (blocks of the flattened w); q_i = the index of the code
    level nearest to w_i / absmax_b (float32 midpoints; a tie goes to the lower level); packed two per byte.
    With ``double_quant`` the absmax are themselves quantized to 8 bits (``double_quant.quantize_absmax``).
    Shapes: w (any, n elements) -> packed (ceil(n / 2),) uint8; state.absmax (ceil(n / blocksize),).
    Example: ``packed, state = quantize_4bit(torch.randn(4096, 4096))`` -> packed (8388608,), 262144 blocks.
    Source: bitsandbytes ``quantize_4bit`` (CPU path), byte for byte; QLoRA section 3.
    """
    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    code = code_for(quant_type).to(w.device)
    w = w.detach()  # quantization is not differentiated (and the CPU kernels write into preallocated outputs)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {double_quant!r}")
    if w.device.type == "cpu":  # the same bytes, in cache-sized chunks with a lookup table (nf4_kernels)
        packed, absmax = quantize_packed(w.reshape(-1), blocksize, level_table(code))
    else:  # the textbook steps: scale, search, pack
        absmax, scaled = blockwise_absmax_scale(w, blocksize)  # scaled: (n,) in [-1, 1]
        if scaled.numel() % 2:  # an odd count is padded with the value 0 (its code, as bitsandbytes does)
            scaled = torch.cat([scaled, scaled.new_zeros(1)])
        packed = pack_4bit(nearest_4bit(scaled, code))
    if not bool(torch.isfinite(absmax).all()):
        block = int((~torch.isfinite(absmax)).nonzero()[0])
        raise ValueError(f"w holds NaN or inf (first in block {block}); quantization needs finite values")
    if not double_quant:
        return packed, QuantState(absmax, blocksize, tuple(w.shape), w.dtype, quant_type, code)
    from qlora_lessons.double_quant import quantize_absmax  # noqa: PLC0415  (lesson 06's idea, used here)

    codes8, offset, state2 = quantize_absmax(absmax)
    return packed, QuantState(codes8, blocksize, tuple(w.shape), w.dtype, quant_type, code, offset, state2)


def dequantize_4bit(packed: torch.Tensor, state: QuantState) -> torch.Tensor:
    """Rebuild the weights: w_i = code[q_i] * absmax_b, in float32, cast to the original dtype and shape.

    With double quantization absmax is first rebuilt as code8[q8] * absmax2 + offset.
    Shapes: packed (ceil(n / 2),) uint8 -> state.shape of state.dtype.
    Example: ``dequantize_4bit(*quantize_4bit(w))`` has w's shape and dtype and |error| <= absmax / 2 * gap.
    """
    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a QuantState, got {type(state).__name__}")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    n = math.prod(state.shape)
    if packed.numel() != (n + 1) // 2:
        raise ValueError(f"packed has {packed.numel()} bytes but shape {state.shape} needs {(n + 1) // 2}")
    absmax = state.absmax
    if state.state2 is not None and state.offset is not None:  # nested: both are set together
        from qlora_lessons.double_quant import dequantize_absmax  # noqa: PLC0415  (lesson 06's idea, used here)

        absmax = dequantize_absmax(state.absmax, state.offset, state.state2)
    if packed.device.type == "cpu":  # the same values, in cache-sized chunks (nf4_kernels)
        out = dequantize_packed(packed.reshape(-1), absmax, state.blocksize, n, level_table(state.code), state.dtype)
    else:  # the textbook steps: unpack, look up, scale
        scale = absmax.repeat_interleave(state.blocksize)[:n]  # (n,): the absmax of each value's block
        out = (state.code.to(packed.device)[unpack_4bit(packed, n).long()] * scale).to(state.dtype)
    return out.view(state.shape)
