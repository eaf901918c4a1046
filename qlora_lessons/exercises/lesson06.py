"""Exercises for 06_double_quantization: bits per parameter, GB saved, centring and rebuilding the constants,
the blocksize at which double quantization stops paying (an experiment).

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qlora_lessons.double_quant import dequantize_absmax, dynamic_map, quantize_absmax
from qlora_lessons.exercises import attempt, close_to, report, report_error


def check_bits_at_blocksize_128(answer: float) -> bool:
    """Bits per parameter of NF4 with double quantization at blocksize 128 (constants in blocks of 256)?"""
    hint = "4 bits + one 8-bit code per 128 weights + one float32 per 128 * 256 weights"
    return report("bits_at_blocksize_128", close_to(answer, solution_bits_at_blocksize_128(), abs_tol=1e-6), hint,
                  answer=answer)


def solution_bits_at_blocksize_128() -> float:
    blocksize, blocksize2 = 128, 256
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)  # 4.0635


def check_gb_saved_65b(answer: float) -> bool:
    """How many GB (10^9 bytes) does double quantization save on a 65B-parameter model at blocksize 64?"""
    hint = "(32 / 64 - 8 / 64 - 32 / (64 * 256)) bits per parameter, times 65e9 parameters, divided by 8 bits per byte"
    return report("gb_saved_65b", close_to(answer, solution_gb_saved_65b(), abs_tol=0.01), hint, answer=answer)


def solution_gb_saved_65b() -> float:
    n = 65e9
    saved_bits = 32 / 64 - (8 / 64 + 32 / (64 * 256))  # 0.5 - 0.127 = 0.373 bits per parameter
    return n * saved_bits / 8 / 1e9  # 3.03 GB


def check_saving_fraction(answer: float) -> bool:
    """What fraction of the memory of 4-bit weights with their constants (blocksize 64) does double quantization save?
    Give a fraction (0.1 is 10%)."""
    hint = "compare the 0.373 bits saved with the 4.5 bits per parameter that the 4-bit model spends"
    return report("saving_fraction", close_to(answer, solution_saving_fraction(), abs_tol=1e-3), hint, answer=answer)


def solution_saving_fraction() -> float:
    before = 4 + 32 / 64  # 4.5 bits per parameter
    after = 4 + 8 / 64 + 32 / (64 * 256)  # 4.127
    return (before - after) / before  # 0.083: about 8%, not 10-20%


def _constants() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    return [torch.rand(n, generator=generator) * s + s for n, s in ((10, 1.0), (600, 0.05))]


def check_centre(fn: Callable) -> bool:
    """Write ``fn(absmax)`` returning ``(centred, offset)``: offset is the mean of absmax (a float),
    centred = absmax - offset."""
    if not callable(fn):
        return report("centre", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    for absmax in _constants():
        try:
            centred, offset = attempt(fn, absmax)
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("centre", error)
        expected, expected_offset = solution_centre(absmax)
        same_offset = close_to(float(offset), expected_offset, abs_tol=1e-6)
        if not (same_offset and torch.allclose(torch.as_tensor(centred), expected)):
            return report("centre", False, "offset = absmax.mean(); subtract it from every constant")
    return report("centre", True)


def solution_centre(absmax: torch.Tensor) -> tuple[torch.Tensor, float]:
    offset = absmax.mean()  # all constants are positive: centring uses both halves of the signed map
    return absmax - offset, float(offset)


def check_rebuild_constants(fn: Callable) -> bool:
    """Write ``fn(codes, offset, absmax2, code8, blocksize2)`` rebuilding the float32 constants from their
    8-bit codes."""
    if not callable(fn):
        return report("rebuild_constants", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    for absmax in _constants():
        codes, offset, state2 = quantize_absmax(absmax, 256)
        try:
            got = torch.as_tensor(attempt(fn, codes, offset, state2.absmax, dynamic_map(), 256))
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("rebuild_constants", error)
        expected = dequantize_absmax(codes, offset, state2)
        if got.shape != expected.shape or not torch.allclose(got.float(), expected, rtol=1e-6, atol=1e-7):
            return report("rebuild_constants", False, "code8[codes] * absmax2[i // blocksize2] + offset")
    return report("rebuild_constants", True)


def solution_rebuild_constants(codes: torch.Tensor, offset: float, absmax2: torch.Tensor, code8: torch.Tensor,
                               blocksize2: int) -> torch.Tensor:
    block = torch.arange(codes.numel()) // blocksize2  # which second-level block each constant is in
    return code8[codes.long()] * absmax2[block] + offset  # (n_blocks,) float32


def check_dq_stops_paying(answer: int) -> bool:
    """Double quantization saves 8.3% of the bits at blocksize 64. Predict, then compute with ``bits_per_param``
    over the blocksizes 32, 64, ..., 4096: the smallest blocksize at which it saves less than 5%?"""
    hint = "for each blocksize: (bits_per_param(b) - bits_per_param(b, double_quant=True)) / bits_per_param(b)"
    return report("dq_stops_paying", answer == solution_dq_stops_paying(), hint, answer=answer)


def solution_dq_stops_paying() -> int:
    from qlora_lessons.blockwise import BLOCKSIZES  # noqa: PLC0415
    from qlora_lessons.double_quant import bits_per_param  # noqa: PLC0415

    for blocksize in BLOCKSIZES:  # 32, 64, ..., 4096
        plain = bits_per_param(blocksize)
        if (plain - bits_per_param(blocksize, double_quant=True)) / plain < 0.05:
            return blocksize  # 128: 4.25 -> 4.063 bits, 4.4%
    raise AssertionError("double quantization saves at least 5% at every blocksize")
