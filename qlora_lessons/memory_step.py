"""Memory of fine-tuning, part 3: the training step that lesson 02 traces and measures, built the same way for both.

``build_training_model`` makes the model a method trains (full fine-tuning, LoRA with peft, QLoRA
with ``NF4Linear`` base layers), for any family ``AutoModelForCausalLM`` builds, on any device:
"meta" (shapes only) before a trace fills it with fake tensors, "cuda" for a measurement.
``run_training_steps`` runs two steps of forward, backward and optimizer step on one batch;
``count_model_bytes`` splits the model's own bytes by part.

Settings: random token ids with labels = inputs; attention "sdpa" (the transformers default, which
never stores the (T, T) attention matrix; "eager", which does, for families without SDPA: Gemma 2);
no KV cache; non-reentrant gradient checkpointing; torch's AdamW with ``foreach=False`` (its CUDA
default, ``foreach=True``, holds another copy of the trained parameters during the step); LoRA
adapters in the weight dtype (peft's ``autocast_adapter_dtype=False``, as the QLoRA reference code
casts them to bf16); no autocast. Each of these is a knob: ``optimizer_impl``, ``attention``,
``adapter_dtype`` and ``kbit_casts`` (peft's defaults), ``precision="autocast"``.

Left out: dropout (every dropout probability of the config is set to 0; LoRA dropout 0), padding and
attention masks, gradient accumulation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
from torch import nn

from qlora_lessons.memory_layout import targeted
from qlora_lessons.memory_standins import AdamW8bitState, NF4Linear
from qlora_lessons.renamed_arguments import renamed_arguments

if TYPE_CHECKING:
    from transformers import PretrainedConfig

QUANT_BUFFERS = ("code", "absmax", "absmax2", "absmax_code", "offset")


@renamed_arguments(lora_r="r", lora_targets="target_modules")
def build_training_model(config: PretrainedConfig, *, method: str, weight_dtype: torch.dtype, r: int,
                         target_modules, gradient_checkpointing: bool, double_quant: bool, blocksize: int,
                         device: torch.device | str, adapter_dtype: torch.dtype | None = None,
                         kbit_casts: bool = False, attention: str = "sdpa", precision: str = "pure") -> nn.Module:
    """The model that a training step of ``method`` trains, with random values, on ``device`` ("meta" for tracing).

    full: every parameter of the model (``AutoModelForCausalLM``) in ``weight_dtype`` is trained. lora:
    the base is frozen and peft adds rank-``r`` adapters to ``target_modules``. qlora: as lora, and
    every linear layer (or GPT-2 Conv1D) of the decoder layers is replaced by an ``NF4Linear`` (lm_head,
    embeddings and MoE experts, which are 3-D tensors, stay in ``weight_dtype``). Gradient checkpointing
    is transformers' own (non-reentrant), which also makes the embedding output require a gradient.
    ``adapter_dtype``: the LoRA adapters' dtype (None: ``weight_dtype``; torch.float32 is what peft's default
    ``autocast_adapter_dtype=True`` gives). ``kbit_casts``: what ``peft.prepare_model_for_kbit_training``
    does to a 4-bit model, every parameter that is not 4-bit (embeddings, lm_head, norms, biases) cast
    to float32. ``attention``: transformers' "sdpa" or "eager". ``precision="autocast"``: the weights
    in float32, ``weight_dtype`` being the dtype torch.autocast computes in (see ``run_training_steps``).
    Example: ``build_training_model(model_config("llama-7b"), method="lora", ..., device="meta")``.
    """
    from transformers import AutoModelForCausalLM

    from qlora_lessons.memory import to_transformers_config

    config = copy.deepcopy(to_transformers_config(config))
    config.use_cache = False
    config._attn_implementation = attention
    for key, value in config.to_dict().items():  # attention_dropout, resid_pdrop, dropout, ...: no dropout
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
            setattr(config, key, 0.0)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    if not getattr(model_class, "_supports_sdpa", False):  # Gemma 2: soft-capped attention scores, eager only
        config._attn_implementation = "eager"
    with torch.device(device):
        dtype = torch.float32 if precision == "autocast" else weight_dtype  # autocast: float32 weights
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if method == "full":
        return model
    with _quiet_bitsandbytes():
        from peft import LoraConfig, get_peft_model

    targets = sorted({x.name.split(".")[-1] for x in targeted(config, target_modules)})
    conv1d = config.model_type == "gpt2"  # Conv1D stores W as (in, out): peft's fan_in_fan_out
    lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets,
                      fan_in_fan_out=conv1d)
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    if method == "qlora":
        layers = {id(m) for m in decoder_layers(model)}
        inside = {id(m) for layer in decoder_layers(model) for m in layer.modules() if id(m) not in layers}
        for module_name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                weight = getattr(child, "weight", None)
                lora = "lora_" in module_name + child_name
                if id(child) not in inside or lora or weight is None or weight.dim() != 2:
                    continue
                if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
                    out, inp = weight.shape[::-1] if type(child).__name__ == "Conv1D" else weight.shape
                    bias = None if getattr(child, "bias", None) is None else child.bias.dtype
                    setattr(module, child_name, NF4Linear(inp, out, blocksize=blocksize, double_quant=double_quant,
                                                          device=device, bias_dtype=bias, compute_dtype=weight_dtype))
    for name, parameter in model.named_parameters():
        if "lora_" in name and adapter_dtype is not None:
            parameter.data = parameter.data.to(adapter_dtype)
        elif "lora_" not in name and kbit_casts and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.to(torch.float32)
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers: the longest ``nn.ModuleList`` of the model (model.layers, transformer.h, decoder.layers)."""
    lists: list[nn.ModuleList] = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    lengths = [len(layers) for layers in lists]
    return list(lists[lengths.index(max(lengths))]) if lists else []  # the first of the longest


@contextlib.contextmanager
def _quiet_bitsandbytes():
    """Importing bitsandbytes (peft imports it too) logs a warning about an optional kernel package on CPUs
    with AVX-512 BF16; nothing here uses that kernel, so its import is kept quiet."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def materialize_fake(model: nn.Module) -> None:
    """Replace every meta parameter and buffer by a fake CPU tensor of the same shape and dtype (inside fake mode)."""
    made: dict[int, Any] = {}  # a Parameter where the model had one, else a plain tensor
    for module in model.modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None:
                continue
            if id(tensor) not in made:
                fake = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                made[id(tensor)] = nn.Parameter(fake, tensor.requires_grad) if name in module._parameters else fake
            (module._parameters if name in module._parameters else module._buffers)[name] = made[id(tensor)]


def make_optimizer(model: nn.Module, optimizer: str, traced: bool, optimizer_impl: str = "for-loop"
                   ) -> torch.optim.Optimizer:
    """The optimizer over the trained parameters: torch's AdamW (``optimizer_impl`` "for-loop", "foreach"
    or "fused") or SGD, or 8- or 32-bit AdamW (bitsandbytes' on real tensors, its stand-in
    ``AdamW8bitState`` when ``traced``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=1e-4, foreach=False)
    if optimizer in ("adamw8bit", "adamw32bit"):
        bits = 8 if optimizer == "adamw8bit" else 32
        if traced:
            return AdamW8bitState(trainable, lr=1e-4, optim_bits=bits)
        with _quiet_bitsandbytes():
            import bitsandbytes as bnb
        return (bnb.optim.AdamW8bit if bits == 8 else bnb.optim.AdamW32bit)(trainable, lr=1e-4)
    if optimizer_impl == "fused":
        return torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    return torch.optim.AdamW(trainable, lr=1e-4, foreach=optimizer_impl == "foreach")


def run_training_steps(model: nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
                       between=None, before_step=None, autocast_dtype: torch.dtype | None = None) -> None:
    """Two steps of forward, backward, optimizer step; ``between()`` runs after the first step.

    The first step creates the optimizer state, the second shows what every later step holds.
    ``autocast_dtype``: the forward pass and the loss run under ``torch.autocast`` in that dtype (the
    backward outside it, as torch's AMP recipe does); None: no autocast.
    """
    for step in range(2):
        with torch.autocast(input_ids.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        del loss
        if before_step is not None:
            before_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0 and between is not None:
            between()


def one_sequence():
    """Tell transformers that the positions 0..T-1 are one sequence, as it finds out itself on real tensors.

    Under fake tensors it cannot read the positions, assumes packed sequences and builds a (T, T)
    attention mask that every layer keeps; on real tensors it passes no mask and ``is_causal=True``.
    """
    from transformers import masking_utils

    return mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def count_model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's tensors: weights (parameters and buffers), quant_constants (of NF4Linear), adapters.

    A tensor shared by two modules (tied input and output embeddings) is counted once.
    """
    parts = {"weights": 0, "quant_constants": 0, "adapters": 0}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            n_bytes = tensor.numel() * tensor.element_size()
            if isinstance(module, NF4Linear) and name in QUANT_BUFFERS:
                parts["quant_constants"] += n_bytes
            elif "lora_" in module_name:  # peft's lora_A and lora_B
                parts["adapters"] += n_bytes
            else:
                parts["weights"] += n_bytes
    return parts
