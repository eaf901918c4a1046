"""How many bytes of optimizer state an optimizer keeps, where they live, and how much of it can be paged.

Per trainable element, in bytes (float32 state):
    sgd             0                 (no state)
    sgd_momentum    4                 (one buffer: the momentum)
    adamw           4 + 4 = 8         (two moments: exp_avg m and exp_avg_sq v)
    adamw8bit       1 + 1 + 2 * 4 / 256 = 2.03   (uint8 m and v, a float32 absmax per block of 256 for each)
Where the bytes live:
    paged_adamw, paged_adamw8bit (bitsandbytes): the same state, resident on the device in the normal case.
        Each state tensor of at least 1e5 elements is allocated in CUDA unified memory (``cudaMallocManaged``),
        prefetched to the device before its update; the driver evicts its pages to host RAM only when the
        device runs out of memory. ``evictable_bytes`` is that managed part: the most eviction can free.
    offloaded_adamw (the course's ``OffloadedAdamW``): the state in host memory, one page of it on the device.
Sources: QLoRA (Dettmers et al. 2023) section 3, "Paged Optimizers"; bitsandbytes 0.50
``Optimizer8bit.get_state_buffer`` (the 1e5 rule, ``F.get_paged``), ``Optimizer8bit.prefetch_state``,
``functional.get_paged`` (``cget_managed_ptr``: ``cudaMallocManaged``) and ``prefetch_tensor``
(``cprefetch``: ``cudaMemPrefetchAsync``, where the device reports ``cudaDevAttrConcurrentManagedAccess``).

Left out: the step counters (one scalar per tensor), and states kept in the parameters' dtype (torch's
AdamW keeps bfloat16 moments for bfloat16 parameters; bitsandbytes' 32-bit optimizers keep float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qlora_lessons.renamed_arguments import renamed_arguments

# A teaching choice, not a hardware constant: small enough that the course model's state spans many pages.
# (CUDA unified memory migrates in units the driver picks, 4 KiB to 2 MiB.)
PAGE_BYTES = 2**20
# bitsandbytes Optimizer8bit: tensors with fewer elements keep float32 state (AdamW8bit(min_8bit_size=4096)).
MIN_8BIT_SIZE = 4096
# bitsandbytes Optimizer2State.init_state: one float32 absmax per block of 256 elements, for each moment.
BLOCKSIZE_8BIT = 256
# bitsandbytes Optimizer8bit.fill_qmap: two 256-entry float32 code tables (signed dynamic map for m, unsigned
# for v), shared by all tensors of the optimizer.
QMAP_BYTES = 2 * 256 * 4
# bitsandbytes Optimizer8bit.get_state_buffer: `if not self.is_paged or p.numel() < 1e5`: ordinary memory.
MIN_PAGED_SIZE = 100_000

OPTIMIZERS = ("sgd", "sgd_momentum", "adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit", "offloaded_adamw")


def format_gb(n_bytes: int) -> str:
    """Bytes as decimal gigabytes with three significant digits: 24_576_000 -> '0.0246 GB'."""
    if n_bytes == 0:
        return "0 GB"
    gb = n_bytes / 1e9
    decimals = max(3, 2 - math.floor(math.log10(gb)))
    return f"{gb:.{decimals}f} GB"


@dataclass(frozen=True)
class OptimizerStateBytes:
    """An optimizer's state: its size, where it sits in the normal case, and how much of it can be paged out.

    ``device_bytes`` and ``host_bytes``: where the state lives while everything fits. ``evictable_bytes``: the
    part in CUDA unified memory (bitsandbytes' paged optimizers), which the driver may move to host RAM under
    memory pressure; 0 for every other optimizer.
    """

    optimizer: str
    state_bytes: int
    device_bytes: int
    host_bytes: int
    evictable_bytes: int = 0

    def __repr__(self) -> str:
        evictable = f", {format_gb(self.evictable_bytes)} evictable" if self.optimizer.startswith("paged_") else ""
        return (
            f"OptimizerStateBytes({self.optimizer}: {format_gb(self.state_bytes)} of state, "
            f"{format_gb(self.device_bytes)} on the device, {format_gb(self.host_bytes)} in host memory{evictable})"
        )


def _adamw8bit_tensor(n: int) -> tuple[int, int]:
    """bitsandbytes AdamW8bit state of one tensor of n elements: (all bytes, bytes of the m and v buffers)."""
    if n < MIN_8BIT_SIZE:
        return 2 * 4 * n, 2 * 4 * n  # float32 m and v
    return 2 * (n + 4 * math.ceil(n / BLOCKSIZE_8BIT)), 2 * n  # uint8 codes (the buffers) + float32 absmax


def optimizer_state_bytes(
    n_params: int | Sequence[int], optimizer: str = "adamw", *, page_bytes: int = PAGE_BYTES
) -> OptimizerStateBytes:
    """Bytes of optimizer state for ``n_params`` trainable elements, where they live, and what paging can free.

    Equations (n elements, float32 state; 8-bit per tensor of n >= 4096 elements, else float32):
        sgd 0,  sgd_momentum 4 n,  adamw 8 n,
        adamw8bit 2 * (n + 4 * ceil(n / 256)) + 2 * 256 * 4 (the two code tables, once)
        paged_adamw, paged_adamw8bit: the same state, all on the device (host 0);
            evictable = the m and v buffers of tensors with n >= 1e5 (8 n, or 2 n for uint8 codes)
        offloaded_adamw: 8 n in host memory; device = one page, page_bytes // 8 whole elements (OffloadedAdamW).

    ``n_params`` is a count (one tensor) or the element count of each tensor; the 8-bit rule and the paging
    rule are per tensor, so pass ``[p.numel() for p in model.parameters() if p.requires_grad]``.

    Shapes: n_params int or a sequence of ints -> one OptimizerStateBytes.
    Example: ``optimizer_state_bytes(13_000_000_000, "adamw").state_bytes`` -> 104e9 bytes, the 104 GB of
    "optimiser states" of a 13B model; ``optimizer_state_bytes([65_536, 176_128], "paged_adamw")`` -> 1,933,312
    bytes of state, all on the device, 1,409,024 of it evictable (only the second tensor is paged).
    Sources: bitsandbytes 0.50 ``Optimizer2State.init_state`` (blocks of 256, min_8bit_size=4096),
    ``Optimizer8bit.fill_qmap`` and ``get_state_buffer`` (paged only from 1e5 elements); torch.optim.AdamW and
    SGD (exp_avg, exp_avg_sq, momentum_buffer).
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
    if optimizer.endswith("8bit"):
        per_tensor = [_adamw8bit_tensor(k) for k in numels]
        state = sum(total for total, _ in per_tensor) + (QMAP_BYTES if max(numels, default=0) >= MIN_8BIT_SIZE else 0)
        buffers = [buffer for _, buffer in per_tensor]
    else:
        per_element = {"sgd": 0, "sgd_momentum": 4}.get(optimizer, 8)
        state, buffers = per_element * n, [per_element * k for k in numels]
    if optimizer == "offloaded_adamw":
        return OptimizerStateBytes(optimizer, state, device_bytes=min(page_bytes // 8 * 8, state), host_bytes=state)
    evictable = 0
    if optimizer.startswith("paged_"):
        evictable = sum(b for k, b in zip(numels, buffers, strict=True) if k >= MIN_PAGED_SIZE)
    return OptimizerStateBytes(optimizer, state, device_bytes=state, host_bytes=0, evictable_bytes=evictable)


@renamed_arguments(targets="target_modules")
def lora_adapter_shapes(config, r: int, target_modules: tuple[str, ...] | list[str] | str = "all-linear"
                        ) -> dict[str, tuple[int, int]]:
    """The shapes of the LoRA tensors of one decoder layer: ``lora_A`` (r, in) and ``lora_B`` (out, r) per target.

    ``config``: a preset name, a config dict or anything ``memory_models.load_config`` reads. Every decoder
    layer holds the same tensors, so a model holds ``num_hidden_layers`` times these.
    Shapes: -> {"q_proj.lora_A": (r, in), "q_proj.lora_B": (out, r), ...} (peft's names and layouts).
    Example: ``lora_adapter_shapes("llama-7b", 16)["down_proj.lora_A"] -> (16, 11008)``: 176,128 elements,
    over bitsandbytes' 1e5, so a paged optimizer pages its state; ``["q_proj.lora_A"]`` (16, 4096) is not paged.
    """
    from qlora_lessons.memory_layout import shape_of, targeted
    from qlora_lessons.memory_models import load_config

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    shape = shape_of(load_config(config, "config"), "config")
    shapes = {}
    for x in targeted(shape, target_modules):
        shapes[f"{x.name}.lora_A"] = (r, x.inp)
        shapes[f"{x.name}.lora_B"] = (x.out, r)
    return shapes
