"""Memory of fine-tuning, part 2: the formulas, part by part, for full fine-tuning, LoRA and QLoRA.

``estimate_training_memory`` adds up weights, quantization constants, adapters, gradients,
optimizer state and activations from the shapes of the model, and predicts the peak of a training
step. Every term says where it comes from; the activation terms were read off traced steps of the
real Llama architecture (``memory_trace.trace_training_memory``) and are checked against them in
the tests and in lesson 02.

Left out: KV caches (none in training), the CUDA allocator's rounding and fragmentation, the CUDA
context itself (a few hundred MB on a real GPU), and padding of sequences in a batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from qlora_lessons.memory import (
    FLOAT_DTYPES,
    LINEAR_NAMES,
    MODEL_NAMES,
    MemoryBreakdown,
    bytes_per_param,
    check_config,
    check_targets,
    count_lora_parameters,
    count_parameters,
    linear_shapes,
    model_config,
)

if TYPE_CHECKING:
    from transformers import LlamaConfig

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "sgd")


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_knobs(*, method, weight_dtype, optimizer, lora_r, lora_targets, batch_size, seq_len,
                gradient_checkpointing, double_quant, blocksize) -> dict:
    """Check the settings shared by estimate, trace and measure; return them as a dict."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if weight_dtype not in FLOAT_DTYPES:
        raise ValueError(f"weight_dtype must be one of torch.float32, torch.float16, torch.bfloat16, got "
                         f"{weight_dtype!r} (for a 4-bit base use method='qlora'; weight_dtype is its compute dtype)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    _positive_int("lora_r", lora_r)
    check_targets(lora_targets)
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"blocksize must be a power of two from 32 to 4096 (bitsandbytes), got {blocksize!r}")
    for name, flag in (("gradient_checkpointing", gradient_checkpointing), ("double_quant", double_quant)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    return dict(method=method, weight_dtype=weight_dtype, optimizer=optimizer, lora_r=lora_r,
                lora_targets=lora_targets, batch_size=batch_size, seq_len=seq_len,
                gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize)


def _nf4_bytes(out: int, inp: int, blocksize: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight, constants) bytes of one NF4Linear: (n + 1) // 2 and the absmax / code tensors it holds."""
    n = out * inp
    blocks = math.ceil(n / blocksize)
    constants = 16 * 4 + (blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 4 if double_quant else 4 * blocks)
    return (n + 1) // 2, constants


def _optimizer_bytes(sizes: list[int], dtype_bytes: int, optimizer: str) -> int:
    """State bytes for trainable tensors of ``sizes`` values: AdamW 2 moments in the parameter dtype
    (torch.optim.AdamW); 8-bit AdamW 2 uint8 moments + 2 float32 absmax per 256 values, or 2 float32
    moments below 4096 values (bitsandbytes Optimizer2State); SGD without momentum none."""
    if optimizer == "adamw":
        return sum(2 * n * dtype_bytes for n in sizes)
    if optimizer == "adamw8bit":
        return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in sizes)
    return 0


def _activation_bytes(config: LlamaConfig, knobs: dict, b: int) -> int:
    """The most bytes of activations a step holds at once: tensors saved for backward and backward's own.

    The terms are the tensors autograd saves in transformers' Llama with SDPA attention, read off
    traces (T = batch * seq tokens, h hidden, i MLP width, kv key/value width, H heads, V vocabulary,
    b bytes per number in the compute dtype). Per decoder layer:
      attention: q, k, v after rotary and the attention output, T (2h + 2kv) b; SDPA's float32
        log-sum-exp, T H 4;
      two RMSNorms: each keeps its float32 input (transformers upcasts) and 1 / rms, 4 T h + 4 T;
      MLP: the gate and up outputs and SiLU(gate), 3 T i b;
      inputs of trained matrices (for dW, or for LoRA's A): T h b for q/k/v, T h b for gate/up, T i b
        for down (o_proj's input is the attention output, kept already); LoRA also keeps A x, T r b
        per adapter; full fine-tuning keeps both normalised outputs, 2 T h b (the norm weights train).
    Kept during the step: every layer's tensors, or with gradient checkpointing only each layer's
    input, T h b; plus the final RMSNorm (and, full, lm_head's input); without checkpointing, LoRA's
    first RMSNorm keeps nothing, as nothing before it needs a gradient.
    On top, the larger of two moments: the loss, when the float32 log-softmax over the vocabulary,
    its gradient and the logits' gradient are alive together, 3 T V 4; and one layer's work, when
    (with checkpointing) the recomputed layer sits with two (T, i) gradients of the MLP's backward,
    or, for QLoRA, with the largest weight dequantized to the compute dtype, its output and absmax.
    """
    T, L = knobs["batch_size"] * knobs["seq_len"], config.num_hidden_layers
    h, i, V, H = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_attention_heads
    shapes = linear_shapes(config)
    full = knobs["method"] == "full"
    trained = set(shapes) if full else set(check_targets(knobs["lora_targets"]))
    attention = T * (2 * h + 2 * shapes["k_proj"][0]) * b + T * H * 4
    norm = 4 * T * h + 4 * T
    mlp = 3 * T * i * b
    inputs = T * h * b * (bool(trained & {"q_proj", "k_proj", "v_proj"}) + bool(trained & {"gate_proj", "up_proj"}))
    inputs += T * i * b * ("down_proj" in trained)
    extra = 2 * T * h * b if full else len(trained) * T * knobs["lora_r"] * b
    layer = attention + 2 * norm + mlp + inputs + extra
    checkpointing = knobs["gradient_checkpointing"]
    kept = L * (T * h * b if checkpointing else layer) + norm + (2 * T * h * b if full else 0)
    if not full and not checkpointing:
        kept -= norm
    work = 2 * T * i * b
    if knobs["method"] == "qlora":
        n = max(out * inp for out, inp in shapes.values())
        work = max(work, n * b + T * i * b + 4 * math.ceil(n / knobs["blocksize"]) * knobs["double_quant"])
    return kept + max(3 * T * V * 4, (layer if checkpointing else 0) + work)


def estimate_training_memory(model: int | LlamaConfig | str, *, method: str = "full",
                             weight_dtype: torch.dtype = torch.float32, optimizer: str = "adamw", lora_r: int = 8,
                             lora_targets: tuple[str, ...] | str = ("q_proj", "v_proj"), batch_size: int = 1,
                             seq_len: int = 512, gradient_checkpointing: bool = False, double_quant: bool = True,
                             blocksize: int = 64) -> MemoryBreakdown:
    """Predict the memory of one training step, part by part, and its peak (``total``).

    ``model``: a parameter count (then activations are 0: a count says nothing about shapes; only
    ``method="full"`` works from a count), a ``LlamaConfig``, or a name from ``MODEL_NAMES``.
    ``weight_dtype``: the dtype of the weights (full, LoRA) or the compute dtype of QLoRA, whose
    base linear layers are NF4 and whose embeddings, norms, lm_head and adapters use ``weight_dtype``.

    Equations (N parameters, b bytes per parameter, P trained parameters):
      weights = N b (QLoRA: 0.5 byte per linear weight plus the rest in b); quant_constants as
      ``NF4Linear`` holds them; adapters = P b (LoRA, QLoRA); gradients = P b; optimizer: AdamW 2 P b,
      8-bit AdamW about 2 P, SGD 0; activations: see ``_activation_bytes``.
      total = weights + quant_constants + adapters + optimizer + max(activations, gradients + step),
      because the backward pass frees activations as it makes gradients and the optimizer state stays
      from one step to the next. step: torch's AdamW (foreach=False) updates one tensor at a time
      and holds sqrt(v) and sqrt(v) / c for it while the previous tensor's denominator is still
      referenced, max over consecutive trained tensors of (previous + 2 current) b
      (torch.optim.adam._single_tensor_adam); 8-bit AdamW and SGD update in place, step = 0.
    Shapes: scalars only.
    Example: ``estimate_training_memory(13_000_000_000).total -> 208e9`` (52 + 52 + 104 GB).
    """
    knobs = check_knobs(method=method, weight_dtype=weight_dtype, optimizer=optimizer, lora_r=lora_r,
                        lora_targets=lora_targets, batch_size=batch_size, seq_len=seq_len,
                        gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize)
    b = int(bytes_per_param(weight_dtype))
    if isinstance(model, str):
        if model not in MODEL_NAMES:
            raise ValueError(f"model {model!r} is not a known model name; choose from {', '.join(MODEL_NAMES)}")
        model = model_config(model)
    if isinstance(model, int) and not isinstance(model, bool):
        _positive_int("model", model)
        if method != "full":
            raise ValueError(f"method={method!r} needs the model's shapes: pass a LlamaConfig or a name such as "
                             f"'llama-13b' as model, not a parameter count")
        return MemoryBreakdown(model * b, 0, 0, model * b, _optimizer_bytes([model], b, optimizer), 0,
                               model * b + _optimizer_bytes([model], b, optimizer) + model * b)
    config = check_config(model, "model")
    counts = count_parameters(config)
    shapes = linear_shapes(config)
    layers = config.num_hidden_layers
    embedding, h = config.vocab_size * config.hidden_size, config.hidden_size
    # trained tensors in the order the optimizer sees them (model.parameters())
    sizes = [embedding] + ([out * inp for out, inp in shapes.values()] + [h, h]) * layers + [h]
    sizes += [] if config.tie_word_embeddings else [embedding]
    weights, constants, adapters = sum(counts.values()) * b, 0, 0
    if method == "qlora":
        packed = [_nf4_bytes(out, inp, blocksize, double_quant) for out, inp in shapes.values()]
        weights = (counts["embeddings"] + counts["norms"]) * b + layers * sum(p for p, _ in packed)
        constants = layers * sum(c for _, c in packed)
    if method != "full":
        count_lora_parameters(config, lora_r, lora_targets)  # checks the rank against every targeted matrix
        targets = check_targets(lora_targets)
        sizes = [lora_r * n for name in LINEAR_NAMES if name in targets for n in shapes[name][::-1]] * layers
        adapters = sum(sizes) * b
    gradients = sum(sizes) * b
    state = _optimizer_bytes(sizes, b, optimizer)
    step = max(before + 2 * n for before, n in zip([0, *sizes[:-1]], sizes, strict=True)) * b
    step = step if optimizer == "adamw" else 0  # AdamW's temporaries; the others update in place
    activations = _activation_bytes(config, knobs, b)
    total = weights + constants + adapters + state + max(activations, gradients + step)
    return MemoryBreakdown(weights, constants, adapters, gradients, state, activations, total)
