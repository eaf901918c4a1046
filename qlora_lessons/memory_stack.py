"""Memory of fine-tuning, part 6: the software stack behind a number, as knobs of the estimate and the trace.

The same model and batch need different memory on different stacks. Each choice that moves the
bill is a knob of ``estimate_training_memory``, ``trace_training_memory``, ``measure_training_memory``
and ``qlora-lessons memory``; the defaults are the stack lesson 02 traces (``memory_step.py`` builds it):
  optimizer_impl: torch AdamW's "for-loop" (``foreach=False``, the default here), "foreach" (torch's
    CUDA default: sqrt(v) of every tensor at once, another copy of the trained parameters during
    ``step()``) or "fused" (one kernel, no temporaries);
  adapter_dtype, kbit_casts: LoRA adapters in their own dtype (None: the weights'; peft's default
    ``autocast_adapter_dtype=True`` gives float32), and peft's ``prepare_model_for_kbit_training``,
    which casts every parameter that is not 4-bit to float32 (QLoRA only);
  attention: transformers' "sdpa" (no T x T matrix kept) or "eager" (the probabilities of every layer);
  precision: "pure" (every tensor in ``weight_dtype``) or "autocast" (full fine-tuning of float32
    weights under ``torch.autocast`` computing in ``weight_dtype``).
This module checks the knobs and counts the optimizer step's temporaries; the activation terms that the
knobs change are in ``memory_estimate._activation_bytes``.

Left out: CPU offload and sharding (one device), the allocator's caching, FlashAttention-2 kernels outside
PyTorch (they keep what SDPA keeps).
"""

from __future__ import annotations

import torch

from qlora_lessons.memory import FLOAT_DTYPES

OPTIMIZER_IMPLS = ("for-loop", "foreach", "fused")  # torch AdamW's foreach=False, foreach=True (CUDA default), fused
ATTENTIONS = ("sdpa", "eager")  # transformers' attn_implementation
PRECISIONS = ("pure", "autocast")  # every tensor in weight_dtype, or float32 weights under torch.autocast
STACK_DEFAULTS = dict(optimizer_impl="for-loop", adapter_dtype=None, kbit_casts=False, attention="sdpa",
                      precision="pure")


def check_stack(method, weight_dtype, optimizer, optimizer_impl, adapter_dtype, kbit_casts, attention,
                 precision) -> None:
    """Check the knobs that name the software stack; raise ValueError naming the knob that does not fit.

    Example: ``check_stack("full", torch.float32, "adamw", "foreach", None, False, "sdpa", "pure")`` passes.
    """
    if optimizer_impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {optimizer_impl!r}")
    if optimizer_impl != "for-loop" and optimizer != "adamw":
        raise ValueError(f"optimizer_impl={optimizer_impl!r} is an option of torch's AdamW (optimizer='adamw'); "
                         f"{optimizer!r} updates in place")
    if adapter_dtype is not None and (adapter_dtype not in FLOAT_DTYPES or method == "full"):
        raise ValueError(f"adapter_dtype must be None or a float dtype, and only for method 'lora' or 'qlora'; got "
                         f"{adapter_dtype!r} with method={method!r}")
    if kbit_casts and method != "qlora":
        raise ValueError("kbit_casts (peft's prepare_model_for_kbit_training) is for method='qlora' only")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "autocast" and (method != "full" or weight_dtype == torch.float32):
        raise ValueError("precision='autocast' is for method='full' with weight_dtype the autocast dtype "
                         f"(torch.bfloat16 or torch.float16); got method={method!r}, weight_dtype={weight_dtype}")


def step_bytes(sizes: list[int], pb: int, optimizer: str, optimizer_impl: str) -> int:
    """Temporaries of one optimizer step over trained tensors of ``sizes`` values, ``pb`` bytes each.

    torch's AdamW, for-loop (foreach=False): one tensor at a time, sqrt(v) and sqrt(v) / c for it while
    the previous tensor's denominator is still referenced, max of (previous + 2 current) pb
    (torch.optim.adam._single_tensor_adam); foreach (foreach=True, the CUDA default): sqrt(v) of every
    tensor at once, sum(sizes) pb, another copy of the trained parameters (_multi_tensor_adam:
    ``exp_avg_sq_sqrt = torch._foreach_sqrt(...)``); fused: one kernel, none. bitsandbytes' AdamW and SGD: none.
    Shapes: scalars only. Example: ``step_bytes([10, 20], 4, "adamw", "foreach") -> 120``.
    """
    if optimizer != "adamw" or optimizer_impl == "fused":
        return 0
    if optimizer_impl == "foreach":
        return sum(sizes) * pb
    return max(before + 2 * n for before, n in zip([0, *sizes[:-1]], sizes, strict=True)) * pb


def stack_knobs(stack: dict) -> dict:
    """The stack knobs of ``estimate_training_memory`` (optimizer_impl, adapter_dtype, kbit_casts, attention,
    precision), with their defaults; any other keyword is a TypeError."""
    unknown = set(stack) - set(STACK_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unknown))}; the stack knobs are "
                        f"{', '.join(STACK_DEFAULTS)}")
    return {**STACK_DEFAULTS, **stack}
