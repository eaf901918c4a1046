"""Exercises for 07_paged_optimizers: the size of optimizer state, and what paging it costs and saves.

Each ``check_*`` grades an answer against ``qlora_lessons.paging``; each ``solution_*`` works it out by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from qlora_lessons.exercises import report
from qlora_lessons.paging_state import optimizer_state_bytes

# The exercises' fixed numbers, as the lesson states them.
N_PARAMS_7B = 7_000_000_000
N_PARAMS_SMALL = 10_000_000
PAGE_BYTES_EXERCISE = 2**20  # 1 MiB


def _close(answer: object, expected: int) -> bool:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return False
    return abs(answer - expected) <= 1e-6 * max(1, expected)


def check_adamw_state_bytes(answer: int) -> bool:
    """Bytes of AdamW state (float32) for a 7B-parameter model: ``N_PARAMS_7B`` trainable parameters."""
    expected = optimizer_state_bytes(N_PARAMS_7B, "adamw").state_bytes
    return report("AdamW state bytes", _close(answer, expected), "two moments (m and v) per parameter, 4 bytes each")


def solution_adamw_state_bytes() -> int:
    n_params = 7_000_000_000
    moments = 2  # exp_avg m and exp_avg_sq v
    bytes_per_value = 4  # float32
    return n_params * moments * bytes_per_value  # 56e9 bytes = 56 GB, 4x the 14 GB of bf16 weights


def check_pages_per_step(answer: int) -> bool:
    """Pages a ``PagedAdamW(page_bytes=PAGE_BYTES_EXERCISE)`` moves to the device per step for
    ``N_PARAMS_SMALL`` float32 parameters (all with gradients)."""
    elements_per_page = PAGE_BYTES_EXERCISE // 8  # what PagedAdamW.page_elements computes for float32
    expected = -(-N_PARAMS_SMALL // elements_per_page)
    ok = isinstance(answer, (int, float)) and not isinstance(answer, bool) and answer == expected
    return report("pages per step", ok, "a page holds m and v (8 bytes) per element; the last page may be partial")


def solution_pages_per_step() -> int:
    import math

    n_params = 10_000_000
    page_bytes = 2**20
    elements_per_page = page_bytes // (2 * 4)  # m and v, 4 bytes each -> 131072 elements
    return math.ceil(n_params / elements_per_page)  # 76.3 -> 77 pages


def check_peak_saving(answer: int) -> bool:
    """Bytes by which paging lowers the peak: AdamW keeps all state of ``N_PARAMS_SMALL`` parameters on the
    device; ``PagedAdamW(page_bytes=PAGE_BYTES_EXERCISE)`` keeps one page."""
    plain = optimizer_state_bytes(N_PARAMS_SMALL, "adamw")
    paged = optimizer_state_bytes(N_PARAMS_SMALL, "paged_adamw", page_bytes=PAGE_BYTES_EXERCISE)
    expected = plain.device_bytes - paged.device_bytes
    return report("peak saving", _close(answer, expected), "all of the state minus the one page that stays")


def solution_peak_saving() -> int:
    n_params = 10_000_000
    state = n_params * 2 * 4  # AdamW, float32: 80 MB, all on the device
    page = 2**20  # PagedAdamW: one page of state on the device
    return state - page  # 78_951_424 bytes


def check_adamw8bit_state_bytes(fn: Callable[[int], int]) -> bool:
    """A function ``fn(numel) -> bytes`` of bitsandbytes AdamW8bit state for one tensor of ``numel`` elements,
    including the two 256-entry float32 code tables."""
    if not callable(fn):
        return report("AdamW8bit state bytes", False, "pass a function of numel, not a number")
    cases = (1, 100, 4095, 4096, 4097, 1_000_000)
    try:
        ok = all(fn(n) == optimizer_state_bytes(n, "adamw8bit").state_bytes for n in cases)
    except Exception as error:  # a learner's function may fail in any way; say how
        return report("AdamW8bit state bytes", False, f"your function raised {type(error).__name__}: {error}")
    hint = "tensors under 4096 elements keep float32 m and v; larger: 1 byte each + a float32 absmax per 256"
    return report("AdamW8bit state bytes", ok, hint)


def solution_adamw8bit_state_bytes(numel: int) -> int:
    import math

    if numel < 4096:  # bitsandbytes keeps small tensors' state in 32 bits (min_8bit_size=4096)
        return numel * 2 * 4
    blocks = math.ceil(numel / 256)
    per_moment = numel * 1 + blocks * 4  # uint8 codes + float32 absmax per block of 256
    code_tables = 2 * 256 * 4  # signed map for m, unsigned for v, float32
    return 2 * per_moment + code_tables
