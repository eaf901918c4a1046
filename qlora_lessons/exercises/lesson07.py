"""Exercises for 07_paged_optimizers: the size of optimizer state, which of a QLoRA run's tensors a paged
optimizer can evict and how much, and how 8-bit state is stored.

Each ``check_*`` grades an answer against ``qlora_lessons.paging``, ``double_quant`` or ``adam8bit``; each
``solution_*`` works it out by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qlora_lessons.double_quant import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit
from qlora_lessons.exercises import attempt, close_to, is_number, report, report_error
from qlora_lessons.memory_models import load_config
from qlora_lessons.paging_state import MIN_PAGED_SIZE, lora_adapter_shapes, optimizer_state_bytes

# The exercises' fixed numbers, as the lesson states them.
N_PARAMS_7B = 7_000_000_000


def check_adamw_state_bytes(answer: int) -> bool:
    """Bytes of AdamW state (float32) for a 7B-parameter model: ``N_PARAMS_7B`` trainable parameters."""
    expected = optimizer_state_bytes(N_PARAMS_7B, "adamw").state_bytes
    hint = "two moments (m and v) per parameter, 4 bytes each"
    return report("AdamW state bytes", close_to(answer, expected, rel_tol=1e-6), hint, answer=answer)


def solution_adamw_state_bytes() -> int:
    n_params = 7_000_000_000
    moments = 2  # exp_avg m and exp_avg_sq v
    bytes_per_value = 4  # float32
    return n_params * moments * bytes_per_value  # 56e9 bytes = 56 GB, 4x the 14 GB of bf16 weights


def _llama_7b_adapters(r: int) -> tuple[dict[str, tuple[int, int]], int]:
    """LoRA shapes of one Llama-7B decoder layer at rank r (all linear layers), and the number of layers."""
    return lora_adapter_shapes("llama-7b", r), load_config("llama-7b")["num_hidden_layers"]


def check_paged_tensors_7b(answer: int) -> bool:
    """How many of the 14 LoRA tensors of one Llama-7B layer (r=16, all linear layers) bitsandbytes pages:
    a paged optimizer puts the state of a tensor in unified memory only from ``MIN_PAGED_SIZE`` elements."""
    shapes, _ = _llama_7b_adapters(16)
    expected = sum(rows * cols >= MIN_PAGED_SIZE for rows, cols in shapes.values())
    ok = is_number(answer) and answer == expected
    hint = "lora_A is (r, in), lora_B (out, r); count those with r x (in or out) >= 100,000 (in/out: 4096 or 11008)"
    return report("paged adapter tensors", ok, hint, answer=answer)


def solution_paged_tensors_7b() -> int:
    r, hidden, intermediate = 16, 4096, 11008  # Llama-7B: q, k, v, o are (4096, 4096); gate, up (11008, 4096)
    paged = 0
    for out, inp in [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2 + [(hidden, intermediate)]:
        paged += (r * inp >= 100_000) + (out * r >= 100_000)  # lora_A (r, in), lora_B (out, r)
    return paged  # 3: gate and up lora_B (11008 x 16), down lora_A (16 x 11008); 65,536 elements stay put


def check_evictable_bytes_7b(answer: int) -> bool:
    """Bytes of paged 32-bit AdamW state that the driver can evict at most for LoRA r=16 on all linear layers of
    Llama-7B (32 layers): m and v of every tensor that is paged."""
    shapes, layers = _llama_7b_adapters(16)
    expected = optimizer_state_bytes([rows * cols for rows, cols in shapes.values()] * layers,
                                     "paged_adamw").evictable_bytes
    hint = "only the tensors of at least 1e5 elements count (exercise 2); m and v in float32; every layer has them"
    return report("evictable bytes", close_to(answer, expected, rel_tol=1e-9), hint, answer=answer)


def solution_evictable_bytes_7b() -> int:
    layers, r, intermediate = 32, 16, 11008
    paged_elements = 3 * r * intermediate  # gate and up lora_B, down lora_A, in each layer
    return layers * paged_elements * 2 * 4  # m and v in float32: 135,266,304 bytes of the 0.32 GB of state


def check_rank_all_paged(answer: int) -> bool:
    """The smallest rank r at which every LoRA tensor of a Llama-7B layer (all linear layers) is paged."""
    expected = next(r for r in range(1, 4097)
                    if all(a * b >= MIN_PAGED_SIZE for a, b in _llama_7b_adapters(r)[0].values()))
    ok = is_number(answer) and answer == expected
    return report("rank with every tensor paged", ok, "the smallest tensor is r x 4096: solve r x 4096 >= 100,000",
                  answer=answer)


def solution_rank_all_paged() -> int:
    import math

    return math.ceil(100_000 / 4096)  # 24.4 -> 25: at r=24 the (24, 4096) tensors hold 98,304 elements


def check_adamw8bit_state_bytes(fn: Callable[[int], int]) -> bool:
    """A function ``fn(numel) -> bytes`` of bitsandbytes AdamW8bit state for one tensor of ``numel`` elements,
    including the two 256-entry float32 code tables."""
    if not callable(fn):
        return report("AdamW8bit state bytes", False, "pass a function of numel, not a number")
    cases = (1, 100, 4095, 4096, 4097, 1_000_000)
    try:
        ok = all(attempt(fn, n) == optimizer_state_bytes(n, "adamw8bit").state_bytes for n in cases)
    except Exception as error:  # a learner's function may fail in any way; say how
        return report_error("AdamW8bit state bytes", error)
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


def check_8bit_saving_7b(answer: float) -> bool:
    """Bytes of optimizer state that AdamW8bit saves against AdamW for ``N_PARAMS_7B`` parameters, counted as
    one tensor (so all of it is 8-bit), code tables included."""
    expected = (optimizer_state_bytes(N_PARAMS_7B, "adamw").state_bytes
                - optimizer_state_bytes(N_PARAMS_7B, "adamw8bit").state_bytes)
    hint = "8 bytes per parameter before; after: 2 bytes of codes + 2 float32 absmax per 256 + 2 x 1 KiB of tables"
    return report("8-bit saving (7B)", close_to(answer, expected, rel_tol=1e-6), hint, answer=answer)


def solution_8bit_saving_7b() -> int:
    import math

    n = 7_000_000_000
    before = n * 2 * 4  # float32 m and v: 56 GB
    after = 2 * (n * 1 + 4 * math.ceil(n / 256)) + 2 * 256 * 4  # uint8 codes + absmax, for m and v; two tables
    return before - after  # 41.78 GB saved: the state shrinks from 56 GB to 14.2 GB


def check_levels_for_v(answer: int) -> bool:
    """How many of the 256 levels of the *signed* dynamic map could store a second moment v (v >= 0)?"""
    expected = int((dynamic_map(signed=True) >= 0).sum())
    ok = isinstance(answer, int) and not isinstance(answer, bool) and answer == expected
    return report("levels for v", ok, "count the levels >= 0 of dynamic_map(signed=True): zero and the positives",
                  answer=answer)


def solution_levels_for_v() -> int:
    code = dynamic_map(signed=True)  # 127 negative levels, zero, 128 positive ones (1.0 is the last)
    return int((code >= 0).sum())  # 129: half the byte is wasted on v, hence the unsigned map (256 levels >= 0)


def _moments() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    m = torch.randn(1000, generator=generator) * 1e-3  # 3 full blocks of 256 and a partial one
    return [(m, dynamic_map(signed=True)), (m * m, dynamic_map(signed=False))]


def check_dequantize_moment(fn: Callable) -> bool:
    """Write ``fn(codes, absmax, code, blocksize)`` returning the float32 moment that 8-bit state stores:
    codes uint8 (n,), absmax float32 (ceil(n / blocksize),), code the 256-level map."""
    if not callable(fn):
        return report("dequantize_moment", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    for moment, code in _moments():
        codes, state = quantize_blockwise_8bit(moment, 256, code=code)
        try:
            got = torch.as_tensor(attempt(fn, codes, state.absmax, code, 256))
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("dequantize_moment", error)
        expected = dequantize_blockwise_8bit(codes, state)
        if got.shape != expected.shape or not torch.allclose(got.float(), expected, rtol=1e-6, atol=0.0):
            return report("dequantize_moment", False, "code[codes[i]] * absmax[i // blocksize], for every i")
    return report("dequantize_moment", True)


def solution_dequantize_moment(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                               blocksize: int) -> torch.Tensor:
    block = torch.arange(codes.numel()) // blocksize  # the block of each element
    return code[codes.long()] * absmax[block]  # (n,) float32
