"""How many bytes of optimizer state an optimizer keeps, and where (device or host) a paged one keeps them.

Per trainable element, in bytes (float32 state):
    sgd             0                 (no state)
    sgd_momentum    4                 (one buffer: the momentum)
    adamw           4 + 4 = 8         (two moments: exp_avg m and exp_avg_sq v)
    adamw8bit       1 + 1 + 2 * 4 / 256 = 2.03   (uint8 m and v, a float32 absmax per block of 256 for each)
A paged optimizer has the same state, kept in host memory; the device holds one page of it at a time.

Left out: the step counters (one scalar per tensor), and states kept in the parameters' dtype (torch's
AdamW keeps bfloat16 moments for bfloat16 parameters; bitsandbytes' 32-bit optimizers keep float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A teaching choice, not a hardware constant: small enough that the course model's state spans many pages.
PAGE_BYTES = 2**20
# bitsandbytes Optimizer8bit: tensors with fewer elements keep float32 state (AdamW8bit(min_8bit_size=4096)).
MIN_8BIT_SIZE = 4096
# bitsandbytes Optimizer2State.init_state: one float32 absmax per block of 256 elements, for each moment.
BLOCKSIZE_8BIT = 256
# bitsandbytes Optimizer8bit.fill_qmap: two 256-entry float32 code tables (signed dynamic map for m, unsigned
# for v), shared by all tensors of the optimizer.
QMAP_BYTES = 2 * 256 * 4

OPTIMIZERS = ("sgd", "sgd_momentum", "adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit")


def format_gb(n_bytes: int) -> str:
    """Bytes as decimal gigabytes with three significant digits: 24_576_000 -> '0.0246 GB'."""
    if n_bytes == 0:
        return "0 GB"
    gb = n_bytes / 1e9
    decimals = max(3, 2 - math.floor(math.log10(gb)))
    return f"{gb:.{decimals}f} GB"


@dataclass(frozen=True)
class OptimizerStateBytes:
    """An optimizer's state: its size, and how much of it sits in device and in host memory."""

    optimizer: str
    state_bytes: int
    device_bytes: int
    host_bytes: int

    def __repr__(self) -> str:
        return (
            f"OptimizerStateBytes({self.optimizer}: {format_gb(self.state_bytes)} of state, "
            f"{format_gb(self.device_bytes)} on the device, {format_gb(self.host_bytes)} in host memory)"
        )


def _adamw8bit_bytes(numels: Sequence[int]) -> int:
    """bitsandbytes AdamW8bit state for tensors of these sizes (Optimizer2State.init_state)."""
    total = 0
    for n in numels:
        if n < MIN_8BIT_SIZE:
            total += 2 * 4 * n  # float32 m and v
        else:
            total += 2 * (n + 4 * math.ceil(n / BLOCKSIZE_8BIT))  # uint8 codes + float32 absmax, for m and v
    return total + (QMAP_BYTES if any(n >= MIN_8BIT_SIZE for n in numels) else 0)


def optimizer_state_bytes(
    n_params: int | Sequence[int], optimizer: str = "adamw", *, page_bytes: int = PAGE_BYTES
) -> OptimizerStateBytes:
    """Bytes of optimizer state for ``n_params`` trainable elements, and where they live.

    Equations (n elements, float32 state; 8-bit per tensor of n >= 4096 elements, else float32):
        sgd 0,  sgd_momentum 4 n,  adamw 8 n,
        adamw8bit 2 * (n + 4 * ceil(n / 256)) + 2 * 256 * 4 (the two code tables, once)
        paged_*: the same state; device = min(state, one page), host = state.
    A page of ``paged_adamw`` holds whole elements: page_bytes // 8 of them (as ``PagedAdamW`` does).

    ``n_params`` is a count (one tensor) or the element count of each tensor; the 8-bit rule is per tensor,
    so pass ``[p.numel() for p in model.parameters() if p.requires_grad]`` to match bitsandbytes.

    Shapes: n_params int or a sequence of ints -> one OptimizerStateBytes.
    Example: ``optimizer_state_bytes(13_000_000_000, "adamw").state_bytes`` -> 104e9 bytes, the 104 GB of
    "optimiser states" of a 13B model; ``optimizer_state_bytes(4096, "adamw8bit").state_bytes`` -> 10368
    (8192 codes + 2 * 16 absmax * 4 bytes + 2048 bytes of code tables).
    Sources: bitsandbytes 0.50 ``Optimizer2State.init_state`` (blocks of 256, min_8bit_size=4096) and
    ``Optimizer8bit.fill_qmap``; torch.optim.AdamW and SGD (exp_avg, exp_avg_sq, momentum_buffer).
    """
    if isinstance(n_params, bool) or not isinstance(n_params, (int, Sequence)):
        raise TypeError(f"n_params must be an int or a sequence of ints, got {type(n_params).__name__}")
    numels = [n_params] if isinstance(n_params, int) else list(n_params)
    for n in numels:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n_params must hold ints, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"n_params must be >= 0, got {n!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if isinstance(page_bytes, bool) or not isinstance(page_bytes, int):
        raise TypeError(f"page_bytes must be an int, got {type(page_bytes).__name__} {page_bytes!r}")
    if page_bytes < 8:
        raise ValueError(f"page_bytes must be >= 8 (one element's m and v in float32), got {page_bytes!r}")
    n = sum(numels)
    per_element = {"sgd": 0, "sgd_momentum": 4, "adamw": 8, "paged_adamw": 8}
    if optimizer in per_element:
        state = per_element[optimizer] * n
    else:
        state = _adamw8bit_bytes(numels)
    if not optimizer.startswith("paged_"):
        return OptimizerStateBytes(optimizer, state, device_bytes=state, host_bytes=0)
    page = page_bytes // 8 * 8 if optimizer == "paged_adamw" else page_bytes
    return OptimizerStateBytes(optimizer, state, device_bytes=min(page, state), host_bytes=state)
