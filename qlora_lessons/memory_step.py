"""Memory of fine-tuning, part 3: the training step that lesson 02 traces and measures, built the same way for both.

``build_training_model`` makes the model a method trains (full fine-tuning, LoRA with peft, QLoRA
with ``NF4Linear`` base layers) on any device: "meta" (shapes only) before a trace fills it with
fake tensors, "cuda" for a measurement. ``run_training_steps`` runs two steps of forward, backward
and optimizer step on one batch; ``count_model_bytes`` splits the model's own bytes by part.

Settings: random token ids with labels = inputs; attention "sdpa" (the transformers default, which
never stores the (T, T) attention matrix); no KV cache; non-reentrant gradient checkpointing;
torch's AdamW with ``foreach=False`` (its CUDA default, ``foreach=True``, holds another copy of the
trained parameters during the step); LoRA adapters in the weight dtype (peft's
``autocast_adapter_dtype=False``, as the QLoRA reference code casts them to bf16).

Left out: dropout (LoRA dropout 0), padding and attention masks, gradient accumulation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import TYPE_CHECKING
from unittest import mock

import torch
from torch import nn

from qlora_lessons.memory import check_targets
from qlora_lessons.memory_standins import AdamW8bitState, NF4Linear

if TYPE_CHECKING:
    from transformers import LlamaConfig

QUANT_BUFFERS = ("code", "absmax", "absmax2", "absmax_code", "offset")


def build_training_model(config: LlamaConfig, *, method: str, weight_dtype: torch.dtype, lora_r: int,
                         lora_targets, gradient_checkpointing: bool, double_quant: bool, blocksize: int,
                         device: torch.device | str) -> nn.Module:
    """The model that a training step of ``method`` trains, with random values, on ``device`` ("meta" for tracing).

    full: every parameter of ``LlamaForCausalLM`` in ``weight_dtype`` is trained. lora: the base is
    frozen and peft adds rank-``lora_r`` adapters to ``lora_targets``. qlora: as lora, and every
    linear layer of the decoder layers is replaced by an ``NF4Linear`` (lm_head and embeddings stay
    in ``weight_dtype``, as bitsandbytes leaves them). Gradient checkpointing is transformers' own
    (non-reentrant), which also makes the embedding output require a gradient.
    Example: ``build_training_model(model_config("llama-7b"), method="lora", ..., device="meta")``.
    """
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(config)
    config.use_cache = False
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=weight_dtype)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if method == "full":
        return model
    with _quiet_bitsandbytes():
        from peft import LoraConfig, get_peft_model

    targets = check_targets(lora_targets)
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=list(targets))
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    if method == "qlora":
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and ".layers." in f"{name}." and "lora_" not in name + child_name:
                    setattr(module, child_name, NF4Linear(child.in_features, child.out_features, blocksize=blocksize,
                                                          double_quant=double_quant, device=device))
    return model


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
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None:
                continue
            if id(tensor) not in made:
                fake = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                made[id(tensor)] = nn.Parameter(fake, tensor.requires_grad) if name in module._parameters else fake
            (module._parameters if name in module._parameters else module._buffers)[name] = made[id(tensor)]


def make_optimizer(model: nn.Module, optimizer: str, traced: bool) -> torch.optim.Optimizer:
    """The optimizer over the trained parameters: torch's AdamW (foreach=False) or SGD, or 8-bit AdamW
    (bitsandbytes' on real tensors, its stand-in ``AdamW8bitState`` when ``traced``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=1e-4, foreach=False)
    if optimizer == "adamw8bit":
        if traced:
            return AdamW8bitState(trainable, lr=1e-4)
        with _quiet_bitsandbytes():
            import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(trainable, lr=1e-4)
    return torch.optim.AdamW(trainable, lr=1e-4, foreach=False)


def run_training_steps(model: nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
                       between=None, before_step=None) -> None:
    """Two steps of forward, backward, optimizer step; ``between()`` runs after the first step.

    The first step creates the optimizer state, the second shows what every later step holds.
    """
    for step in range(2):
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
