"""Exercises for 05_nf4_by_hand: absmax int8, the nearest level, packing, the seed's 4-bit example, FP4 bits,
the true memory reduction, the best NF4 offset (an experiment).

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qlora_lessons.blockwise import nearest_code
from qlora_lessons.exercises import agrees, attempt, close_to, is_number, report, report_error
from qlora_lessons.nf4 import fp4_code, nf4_code


def _vectors() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    outlier = torch.tensor([-3.0, 1.0, 0.5, -0.2, 0.0])  # the largest magnitude is negative
    return [torch.randn(n, generator=generator) * s for n, s in ((8, 1.0), (100, 0.02), (33, 50.0))] + [outlier]


def check_absmax_int8(fn: Callable) -> bool:
    """Write ``fn(x)`` returning x quantized to int8 by absmax: round(127 * x / max |x|), as torch.int8."""
    hint = "scale by 127 / x.abs().max(), then torch.round, then .to(torch.int8)"
    return agrees("absmax_int8", fn, solution_absmax_int8, [(x,) for x in _vectors()], hint, exact=True)


def solution_absmax_int8(x: torch.Tensor) -> torch.Tensor:
    scale = 127 / x.abs().max()  # the largest |x| maps to 127
    return torch.round(x * scale).to(torch.int8)


def check_nearest_level(fn: Callable) -> bool:
    """Write ``fn(x, levels)``: the index of the nearest of the sorted ``levels`` for each value of x,
    taking the lower level when x is exactly halfway between two."""
    levels = nf4_code()
    midpoints = (levels[:-1] + levels[1:]) / 2
    cases = [(x.clamp(-1, 1), levels) for x in _vectors()] + [(midpoints, levels), (levels, levels)]
    hint = "count the midpoints (levels[i] + levels[i+1]) / 2 that lie strictly below each value"
    return agrees("nearest_level", fn, solution_nearest_level, cases, hint, exact=True)


def solution_nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    midpoints = (levels[:-1] + levels[1:]) / 2  # 15 boundaries between 16 levels
    return (x[:, None] > midpoints[None, :]).sum(dim=1)  # (n, 15) -> (n,): boundaries below each value


def check_pack_pair(fn: Callable) -> bool:
    """Write ``fn(high, low)`` packing two 4-bit codes (0..15) into one byte, ``high`` in the upper nibble."""
    cases = [(torch.tensor(h), torch.tensor(lo)) for h in range(16) for lo in range(16)]
    return agrees("pack_pair", fn, solution_pack_pair, cases, "high * 16 + low, i.e. (high << 4) | low", exact=True)


def solution_pack_pair(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    return (high << 4) | low  # 0b hhhh llll


def check_n_constants(answer: int) -> bool:
    """How many absmax constants does a 4096 x 4096 weight need at blocksize 64?"""
    return report("n_constants", answer == solution_n_constants(), "one constant per block of 64 values", answer=answer)


def solution_n_constants() -> int:
    n = 4096 * 4096
    return math.ceil(n / 64)  # 262,144 constants: 1 MiB of float32


def check_seed_example_level(answer: float) -> bool:
    """A block whose absmax is 1 holds -0.765432. Which NF4 level does it become (a number in [-1, 1])?"""
    ok = close_to(answer, solution_seed_example_level(), abs_tol=1e-6)
    return report("seed_example_level", ok, "find the nearest of the 16 values of nf4_code(); it is not -0.75",
                  answer=answer)


def solution_seed_example_level() -> float:
    levels = nf4_code()
    index = nearest_code(torch.tensor([-0.765432]), levels)  # the value / absmax, with absmax 1
    return float(levels[index])  # -0.6961928: NF4 has no level at -0.75


def check_fp4_decode(fn: Callable) -> bool:
    """Write ``fn(bits)`` turning a 4-bit pattern (an int 0..15, bits s e1 e0 m) into bitsandbytes' FP4 value
    in [-1, 1]: e = 0 gives m * 0.0625, e = 1, 2, 3 give 2^(4 - e) * (1 + m / 2); the sign bit negates; / 12."""
    if not callable(fn):
        return report("fp4_decode", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    expected = fp4_code()
    for bits in range(16):
        try:
            got = float(attempt(fn, bits))
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("fp4_decode", error)
        if not math.isclose(got, float(expected[bits]), rel_tol=1e-6, abs_tol=1e-9):
            return report("fp4_decode", False, f"pattern {bits} (0b{bits:04b}) gave {got:.6g}; "
                          "sign = bits >> 3, e = (bits >> 1) & 3, m = bits & 1")
    return report("fp4_decode", True)


def solution_fp4_decode(bits: int) -> float:
    sign = -1.0 if bits & 0b1000 else 1.0
    e, m = (bits >> 1) & 0b11, bits & 1
    magnitude = m * 0.0625 if e == 0 else 2.0 ** (4 - e) * (1 + m / 2)  # bitsandbytes' exponent counts down
    return sign * magnitude / 12  # 12 = 2^3 * 1.5, the largest magnitude


def check_reduction_vs_bfloat16(answer: float) -> bool:
    """By what fraction does NF4 at blocksize 64, with one float32 absmax per block, shrink a bfloat16 weight?"""
    ok = close_to(answer, solution_reduction_vs_bfloat16(), abs_tol=5e-4)
    hint = "count the bits per weight, codes and constants: 4 + 32 / 64; compare with 16 (a fraction: 0.5 is 50%)"
    return report("reduction_vs_bfloat16", ok, hint, answer=answer)


def solution_reduction_vs_bfloat16() -> float:
    bits = 4 + 32 / 64  # 4.5 bits per weight with its share of the float32 absmax
    return 1 - bits / 16  # 0.719: 72%, not the 87.5% of 4 bits vs 32


def _offset_snr(offset: float, w: torch.Tensor) -> float:
    from qlora_lessons.blockwise import quantization_error  # noqa: PLC0415
    from qlora_lessons.quant_codes import fake_quantize, normal_code  # noqa: PLC0415

    return quantization_error(w, fake_quantize(w, normal_code(float(offset)), 64)).snr_db


def check_best_offset(answer: float) -> bool:
    """NF4's offset 0.9677083 places its level 1.0 at Phi^-1(offset) = 1.848 standard deviations. Sweep the
    offset over 0.85..0.99 with ``normal_code(offset)`` and ``fake_quantize`` on normal data in blocks of 64:
    which offset gives the highest signal-to-noise ratio? (Within 0.03 dB of the best counts as right.)"""
    w = torch.randn(2**16, generator=torch.Generator().manual_seed(5))
    if not is_number(answer) or not 0.85 <= answer <= 0.99:
        return report("best_offset", False, "a probability between 0.85 and 0.99, e.g. the best of your sweep",
                      answer=answer)
    best = max(_offset_snr(o, w) for o in torch.linspace(0.85, 0.99, 15).tolist())
    hint = ("for each offset in torch.linspace(0.85, 0.99, 15): SNR of fake_quantize(w, normal_code(offset)); "
            "is NF4's 0.9677 the best?")
    return report("best_offset", _offset_snr(answer, w) >= best - 0.03, hint, answer=answer)


def solution_best_offset(w: torch.Tensor | None = None) -> float:
    w = torch.randn(2**16, generator=torch.Generator().manual_seed(0)) if w is None else w
    offsets = torch.linspace(0.85, 0.99, 15).tolist()
    snrs = [_offset_snr(o, w) for o in offsets]  # plot_offset_sweep(offsets, snrs) draws them
    return offsets[max(range(len(snrs)), key=snrs.__getitem__)]  # about 0.93-0.94: below NF4's 0.9677
