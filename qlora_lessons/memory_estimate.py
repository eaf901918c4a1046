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

from qlora_lessons.memory import FLOAT_DTYPES, MemoryBreakdown, bytes_per_param
from qlora_lessons.memory_layout import (
    check_config,
    count_lora_parameters,
    count_parameters,
    is_sparse,
    layer_linears,
    norms_per_layer,
    targeted,
)
from qlora_lessons.memory_models import ModelShape
from qlora_lessons.memory_stack import check_stack, step_bytes
from qlora_lessons.renamed_arguments import renamed_arguments

if TYPE_CHECKING:
    from transformers import PretrainedConfig

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "adamw32bit", "sgd")  # adamw32bit: bitsandbytes' 32-bit (and paged) AdamW


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_knobs(*, method, weight_dtype, optimizer, r, target_modules, batch_size, seq_len,
                gradient_checkpointing, double_quant, blocksize, optimizer_impl="for-loop", adapter_dtype=None,
                kbit_casts=False, attention="sdpa", precision="pure") -> dict:
    """Check the settings shared by estimate, trace and measure; return them as a dict."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if weight_dtype not in FLOAT_DTYPES:
        raise ValueError(f"weight_dtype must be one of torch.float32, torch.float16, torch.bfloat16, got "
                         f"{weight_dtype!r} (for a 4-bit base use method='qlora'; weight_dtype is its compute dtype)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    _positive_int("r", r)
    # the form only: which names exist depends on the model (memory_layout.targeted checks them against it)
    if target_modules != "all-linear" and (not isinstance(target_modules, (tuple, list)) or not target_modules
                                         or not all(isinstance(t, str) for t in target_modules)):
        raise ValueError(f"target_modules must be 'all-linear' or a non-empty tuple of module names such as "
                         f"('q_proj', 'v_proj'), got {target_modules!r}")
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"blocksize must be a power of two from 32 to 4096 (bitsandbytes), got {blocksize!r}")
    for name, flag in (("gradient_checkpointing", gradient_checkpointing), ("double_quant", double_quant),
                       ("kbit_casts", kbit_casts)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    check_stack(method, weight_dtype, optimizer, optimizer_impl, adapter_dtype, kbit_casts, attention, precision)
    return dict(method=method, weight_dtype=weight_dtype, optimizer=optimizer, r=r,
                target_modules=target_modules, batch_size=batch_size, seq_len=seq_len,
                gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize,
                optimizer_impl=optimizer_impl, adapter_dtype=adapter_dtype, kbit_casts=kbit_casts,
                attention=attention, precision=precision)


def _nf4_bytes(out: int, inp: int, blocksize: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight, constants) bytes of one NF4Linear: (n + 1) // 2 and the absmax / code tensors it holds."""
    n = out * inp
    blocks = math.ceil(n / blocksize)
    constants = 16 * 4 + (blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 4 if double_quant else 4 * blocks)
    return (n + 1) // 2, constants


def _optimizer_bytes(sizes: list[int], dtype_bytes: int, optimizer: str) -> int:
    """State bytes for trainable tensors of ``sizes`` values: AdamW 2 moments in the parameter dtype
    (torch.optim.AdamW); 8-bit AdamW 2 uint8 moments + 2 float32 absmax per 256 values, or 2 float32
    moments below 4096 values (bitsandbytes Optimizer2State); 32-bit AdamW (bitsandbytes AdamW32bit,
    PagedAdamW32bit) 2 float32 moments whatever the parameter dtype; SGD without momentum none."""
    if optimizer == "adamw":
        return sum(2 * n * dtype_bytes for n in sizes)
    if optimizer == "adamw8bit":
        return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in sizes)
    if optimizer == "adamw32bit":
        return sum(8 * n for n in sizes)
    return 0


def _activation_bytes(config: ModelShape, knobs: dict, b: int) -> tuple[int, int]:
    """The most bytes of activations a step holds at once: tensors saved for backward and backward's own;
    and what the backward of the first decoder layer holds, the last layer it reaches (LoRA's peak can
    fall there, with the gradients of every other layer made).

    The terms are the tensors autograd saves in transformers' models with SDPA attention, read off
    traces (T = batch * seq tokens, h hidden, i MLP width, q = H head_dim and kv = KV head_dim the
    query and key/value widths, H heads, V vocabulary, b bytes per number in the compute dtype). Per
    decoder layer:
      attention: q, k, v after rotary and the attention output, T (2q + 2kv) b; SDPA's float32
        log-sum-exp, T H 4; Qwen3 and Gemma 3 normalise q and k per head: their float32 inputs too;
      RMSNorms (2 per layer, Gemma 4): each keeps its float32 input (transformers upcasts) and 1 / rms,
        4 T h + 4 T; LayerNorms (GPT-2, OPT) keep their input, mean and 1 / std, T h b + 8 T;
      MLP: gated (Llama and kin, Phi-3, Gemma): the gate and up outputs and act(gate), 3 T i b; GPT-2's
        tanh GELU (written out in Python ops) keeps its input and three intermediates of it, 4 T i b;
        OPT's ReLU keeps its output, T i b;
        MoE: the same for the T k rows the experts see (top-k routing: every token goes to k experts), plus
        the router's float32 probabilities, the experts' outputs and their float32 weighted sum,
        T E 4 + T k h (b + 4), and (full, for the experts' dW) the gathered rows and the down matrices'
        input, T k (h + i) b;
      inputs of trained matrices (for dW, or for LoRA's A): T h b for q/k/v, T h b for the MLP's first
        matrices, T i b for the last (o_proj's input is the attention output, kept already); LoRA also
        keeps A x, T r b per adapter; full fine-tuning keeps both normalised outputs, 2 T h b.
    Kept during the step: every layer's tensors, or with gradient checkpointing only each layer's
    input, T h b; plus the final norm (and, full, lm_head's input); without checkpointing, LoRA's
    first norm keeps nothing, as nothing before it needs a gradient.
    On top, the larger of two moments: the loss, when the float32 log-softmax over the vocabulary,
    its gradient and the logits' gradient are alive together, 3 T V 4 (Gemma 2's logit soft-capping
    adds its tanh output, T V b); and one layer's work, when (with checkpointing) the
    recomputed layer sits with two (T, i) gradients of the MLP's backward, or, for QLoRA, with the
    largest weight dequantized to the compute dtype, its output and absmax.
    """
    # the stack: a float32 stream (prepare_model_for_kbit_training's float32 embeddings and norms make every
    # residual float32, and Linear4bit returns its input's dtype); adapters in their own dtype (peft casts x to it)
    compute, b = b, 4 if knobs["kbit_casts"] else b
    ab = int(bytes_per_param(knobs["adapter_dtype"])) if knobs["adapter_dtype"] is not None else compute
    T, L = knobs["batch_size"] * knobs["seq_len"], config.num_hidden_layers
    h, i, V, H = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_attention_heads
    q, kv, kind = H * config.head_dim, config.num_key_value_heads * config.head_dim, config.model_type
    linears = layer_linears(config)
    full = knobs["method"] == "full"
    trained = linears if full else targeted(config, knobs["target_modules"])
    roles = {x.role for x in trained}
    wide, per_head = norms_per_layer(config)
    layernorm = kind in ("gpt2", "opt")
    gemma = kind in ("gemma2", "gemma3_text")  # norms in float32 throughout: x (1 + w) keeps a float32 output
    attention = T * (2 * q + 2 * kv) * b + T * H * 4
    attention += (kind == "phi3") * T * (q + kv) * b  # the fused qkv output, kept whole by v (a view of it)
    if kind == "gemma2":  # eager attention: tanh-capped scores, float32 softmax and its copy, (B, H, S, S) each,
        attention += T * knobs["seq_len"] * H * (2 * b + 4 + b // 2)  # and half a copy more, read off traces
    eager = knobs["attention"] == "eager" and kind != "gemma2"
    if eager:  # T x T probabilities: the float32 softmax output and its copy in the compute dtype, (B, H, S, S)
        # each; no log-sum-exp; k and v repeated to H heads (a copy, GQA); the output is kept only as o_proj's input
        attention += T * knobs["seq_len"] * H * (4 + (b if b != 4 else 0)) - T * H * 4 + 2 * T * (q - kv) * b
        attention -= T * q * b * ("o" not in roles)
    if per_head:  # q_norm and k_norm: float32 inputs and 1 / rms; trained, also their outputs
        attention += 4 * T * (q + kv) + 4 * T * (H + config.num_key_value_heads)
        attention += full * T * (q + kv) * (4 if gemma else b)
    norm = T * h * b + 8 * T if layernorm else 4 * T * h + 4 * T
    rows = T * config.top_k if is_sparse(config) else T  # token rows through the MLP
    mlp = {"gpt2": 4, "opt": 1}.get(kind, 3) * rows * i * b
    if is_sparse(config):  # router probabilities; the gathered rows; expert outputs and their float32 weighted sum
        mlp += T * config.experts * 4 + rows * h * (b + 4) + full * rows * (h + i) * b
    inputs = T * h * b * (bool(roles & {"qkv"}) + bool(roles & {"up", "router"}))
    inputs += rows * i * b * ("down" in roles and kind != "opt")  # OPT's ReLU keeps fc2's input already
    if not full and ab != b:  # each adapter keeps its own cast copy of its input (its A needs it)
        inputs = sum((rows if x.role in ("up", "down") else T) * x.inp * ab for x in trained)
    if full:  # the norm weights train: RMSNorm keeps its normalised output (LayerNorm recomputes it)
        extra = 0 if layernorm else wide * T * h * 4 if gemma else 2 * T * h * b
    else:
        extra = len(trained) * T * knobs["r"] * ab
    layer = attention + wide * norm + mlp + inputs + extra
    checkpointing = knobs["gradient_checkpointing"]
    autocast = knobs["precision"] == "autocast"
    if autocast:  # float32 residual stream: the norms' float32 outputs are kept, and each linear layer keeps its
        # own 16-bit copy of its float32 input (autocast casts per call)
        layer += wide * T * h * (4 - b) + T * h * b * (sum(x.role == "qkv" for x in linears) - 1
                                                       + sum(x.role == "up" for x in linears) - 1)
    kept = L * (T * h * (4 if autocast else b) if checkpointing else layer) + norm + (2 * T * h * b if full else 0)
    if not full and not checkpointing:
        kept -= norm
    work = 2 * rows * i * b + gemma * 4 * T * h * 4  # Gemma: float32 gradients through its float32 norms
    work += is_sparse(config) * rows * h * 4  # MoE: the float32 gradient of the experts' weighted sum
    if not full:  # the gradients of the fused outputs, whole (Phi-3), of OPT's scaled q and its norms' inputs
        work += (kind == "phi3") * T * (2 * i + q + kv) * b + (kind == "opt") * T * (i + 2 * h) * b
    # Gemma 2's eager attention: its backward holds the scores' gradient (B, H, S, S), twice with checkpointing
    scores = (kind == "gemma2") * T * knobs["seq_len"] * H * b * (2 if checkpointing else 1)
    if eager:  # the probabilities' gradient and its float32 copy, once the MLP and its norm have freed theirs
        scores = max(0, T * knobs["seq_len"] * H * (b + 4) - mlp - norm - work)
    if knobs["method"] == "qlora":
        n = max(x.out * x.inp for x in linears)
        work = max(work, n * compute + T * i * b + 4 * math.ceil(n / knobs["blocksize"]) * knobs["double_quant"])
    # Gemma 2: logits = cap tanh(logits / cap), cap 30 unless its config.json says otherwise (Gemma2Config)
    capped = bool(config.get("final_logit_softcapping", 30.0 if kind == "gemma2" else None))
    loss = 3 * T * V * 4 + capped * T * V * b
    # autocast's cache: a 16-bit copy of every weight a linear layer (and lm_head) used, kept until backward
    casts = autocast * b * (L * sum(x.out * x.inp for x in linears) + h * V)
    first = layer + work + scores + (T * h * b if checkpointing else 0)
    return casts + kept + max(loss, (layer if checkpointing else 0) + work + scores), first


@renamed_arguments(lora_r="r", lora_targets="target_modules")
def estimate_training_memory(model: int | PretrainedConfig | str | dict, *, method: str = "full",
                             weight_dtype: torch.dtype = torch.float32, optimizer: str = "adamw", r: int = 8,
                             target_modules: tuple[str, ...] | str = ("q_proj", "v_proj"), batch_size: int = 1,
                             seq_len: int = 512, gradient_checkpointing: bool = False, double_quant: bool = True,
                             blocksize: int = 64, optimizer_impl: str = "for-loop",
                             adapter_dtype: torch.dtype | None = None, kbit_casts: bool = False,
                             attention: str = "sdpa", precision: str = "pure") -> MemoryBreakdown:
    """Predict the memory of one training step, part by part, and its peak (``total``).

    ``model``: a parameter count (then activations are 0: a count says nothing about shapes; only
    ``method="full"`` works from a count), a transformers config of any family in
    ``memory_layout.FAMILIES``, a dict or config.json path, or a preset name (``PRESET_NAMES``).
    ``weight_dtype``: the dtype of the weights (full, LoRA) or the compute dtype of QLoRA, whose
    base linear layers are NF4 and whose embeddings, norms, biases, lm_head, adapters and MoE experts
    use ``weight_dtype`` (experts are 3-D tensors in transformers 5, and its 4-bit loading replaces only
    nn.Linear and Conv1D: transformers.integrations.bitsandbytes.replace_with_bnb_linear).

    Equations (N parameters, b bytes per parameter, P trained parameters):
      weights = N b (QLoRA: 0.5 byte per linear weight plus the rest in b); quant_constants as
      ``NF4Linear`` holds them; adapters = P b (LoRA, QLoRA); gradients = P b; optimizer: AdamW 2 P b,
      8-bit AdamW about 2 P, 32-bit AdamW 8 P, SGD 0; activations: see ``_activation_bytes``.
      total = weights + quant_constants + adapters + optimizer + max(activations, gradients + step, last),
      because the backward pass frees activations as it makes gradients and the optimizer state stays
      from one step to the next; last (LoRA, QLoRA): the gradients of all layers but the first, made
      while the first layer's backward holds its activations. step: the optimizer's temporaries
      (``memory_stack.step_bytes``: torch's AdamW for-loop, foreach or fused; bitsandbytes' AdamW and SGD none).
    The stack (each a knob, each traced in the tests): ``optimizer_impl`` "for-loop" (the default),
    "foreach" (torch's CUDA default: + one copy of the trained parameters during step()) or "fused";
    ``adapter_dtype`` (None: ``weight_dtype``; peft's default gives float32) and ``kbit_casts`` (QLoRA:
    ``prepare_model_for_kbit_training``'s float32 embeddings, lm_head and norms, which make the residual
    stream float32); ``attention`` "sdpa" (no T x T matrix kept) or "eager" (the float32 softmax output and
    its copy in the compute dtype, B H S S each, per layer); ``precision`` "pure" (every tensor in
    ``weight_dtype``) or "autocast" (full fine-tuning under torch.autocast in ``weight_dtype``: float32
    weights, gradients and moments, plus autocast's 16-bit copy of every linear weight, kept until backward).
    Shapes: scalars only.
    Example: ``estimate_training_memory(13_000_000_000).total -> 208e9`` (52 + 52 + 104 GB).
    """
    knobs = check_knobs(method=method, weight_dtype=weight_dtype, optimizer=optimizer, r=r,
                        target_modules=target_modules, batch_size=batch_size, seq_len=seq_len,
                        gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize,
                        optimizer_impl=optimizer_impl, adapter_dtype=adapter_dtype, kbit_casts=kbit_casts,
                        attention=attention, precision=precision)
    b = int(bytes_per_param(weight_dtype))
    # bytes of a trained number: float32 under autocast, the adapter dtype for LoRA and QLoRA
    pb = 4 if precision == "autocast" else int(bytes_per_param(adapter_dtype or weight_dtype))
    if isinstance(model, int) and not isinstance(model, bool):
        _positive_int("model", model)
        if method != "full":
            raise ValueError(f"method={method!r} needs the model's shapes: pass a config or a name such as "
                             f"'llama-13b' as model, not a parameter count")
        state = _optimizer_bytes([model], pb, optimizer)
        # a count says nothing about how the parameters split into tensors: only foreach's whole copy is counted
        step = step_bytes([model], pb, optimizer, optimizer_impl) if optimizer_impl == "foreach" else 0
        return MemoryBreakdown(model * pb, 0, 0, model * pb, state, 0, model * pb + state + model * pb + step)
    config = check_config(model, "model")
    limit = config.positions - 2 * (config.model_type == "opt")  # OPT's table has 2 rows more than positions
    if config.positions and seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is longer than the {limit} positions of {config.model_type}'s learned "
                         f"position table")
    counts = count_parameters(config)
    linears = layer_linears(config)
    layers, h, i = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    embedding = counts["embeddings"] // (1 if config.tie_word_embeddings else 2)
    # trained tensors, about in the order the optimizer sees them (model.parameters()); the step term needs it
    per_layer = [n for x in linears for n in ((x.out * x.inp, x.out) if x.bias else (x.out * x.inp,))]
    per_layer += [2 * config.experts * i * h, config.experts * h * i] if is_sparse(config) else []
    per_layer += [h] * (counts["norms"] // h // max(layers, 1))
    sizes = [embedding] + per_layer * layers + [h] + ([] if config.tie_word_embeddings else [embedding])
    weights, constants, adapters = sum(counts.values()) * (4 if precision == "autocast" else b), 0, 0
    if method == "qlora":  # prepare_model_for_kbit_training casts every parameter that is not 4-bit to float32
        packed = [_nf4_bytes(x.out, x.inp, blocksize, double_quant) for x in linears if x.role != "router"]
        weights = (sum(counts.values()) - counts["linear"]) * (4 if kbit_casts else b)
        weights += layers * sum(p for p, _ in packed)
        constants = layers * sum(c for _, c in packed)
    if method != "full":
        count_lora_parameters(config, r, target_modules)  # checks the rank against every targeted matrix
        sizes = [r * n for x in targeted(config, target_modules) for n in (x.inp, x.out)] * layers
        adapters = sum(sizes) * pb
    gradients = sum(sizes) * pb
    state = _optimizer_bytes(sizes, pb, optimizer)
    step = step_bytes(sizes, pb, optimizer, optimizer_impl)
    activations, first_layer = _activation_bytes(config, knobs, b)
    # LoRA, QLoRA: every gradient belongs to a layer; while the first layer's backward runs, the others' are made
    last = 0 if method == "full" else gradients * (layers - 1) // max(layers, 1) + first_layer
    total = weights + constants + adapters + state + max(activations, gradients + step, last)
    return MemoryBreakdown(weights, constants, adapters, gradients, state, activations, total)
