"""What the LoRA and QLoRA helpers leave out of a model, said out loud: weight matrices outside linear layers.

``add_lora`` and ``prepare_qlora`` work on linear layers: ``nn.Linear`` (bitsandbytes' 4-bit ``Linear4bit``
is one) and GPT-2's ``Conv1D``. In the Mixture-of-Experts models of transformers 5 (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, ...) the experts are not linear layers: each block keeps all its experts in two 3-D
parameters, ``mlp.experts.gate_up_proj`` (experts, 2 * intermediate, hidden) and ``mlp.experts.down_proj``
(experts, hidden, intermediate), and the router ``mlp.gate`` is a module of its own with a 2-D ``weight``.

What the reference stack does with them (transformers 5.24, peft 0.21, bitsandbytes 0.50):

- peft's ``"all-linear"`` takes the attention's linear layers and, for the model types whose layout changed
  from transformers 4 (Mixtral, the Qwen2-MoE family; ``peft.utils.transformers_weight_conversion``), adds
  ``target_parameters`` for the router weight and both expert tensors: ``lora.ParamWrapper``, one A and B per
  expert stacked, ``gate_up_proj`` with rank 2r and lora_alpha 2 lora_alpha (it fuses the old w1 and w3).
  transformers maps Qwen3-MoE and OLMoE to the Qwen2-MoE layout, so they are included; for MoE types
  it does not map, peft's ``"all-linear"`` leaves the experts out, silently.
- ``BitsAndBytesConfig(load_in_4bit=True)`` replaces ``nn.Linear`` layers only: the experts stay 16-bit.

Here ``add_lora(..., target_parameters=[...])`` adapts such tensors as peft does (``lora_experts``), and
``"all-linear"`` takes what peft's takes, by peft's rule; where a model has tensors it is not told to adapt,
``add_lora`` (with ``"all-linear"``) warns with a ``LeftOutWarning`` that names them and their share of the model's
parameters. ``prepare_qlora`` and 4-bit loading quantize linear layers only and warn the same way.
``matrices_outside_linear_layers(model)`` lists the tensors.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence

from torch import nn

from qlora_lessons.lora_experts import LoRAParameter
from qlora_lessons.lora_layer import LoRAAdapter, is_conv1d


class LeftOutWarning(UserWarning):
    """A helper left weight matrices of the model out of what it was asked to do (adapt, quantize)."""


def matrices_outside_linear_layers(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter with 2 or more dimensions that is not the weight of a linear layer or an embedding.

    These are what ``add_lora`` and ``prepare_qlora`` cannot reach: MoE expert tensors, MoE routers.
    Shapes: a model in, ``{full parameter name: shape}`` out.
    Example: a 2-layer Mixtral with 4 experts -> ``{"model.layers.0.mlp.gate.weight": (4, 64),
    "model.layers.0.mlp.experts.gate_up_proj": (4, 192, 64), "model.layers.0.mlp.experts.down_proj":
    (4, 64, 96), ...}``; a Llama -> ``{}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inside_adapters = {id(p) for m in model.modules() if isinstance(m, (LoRAAdapter, LoRAParameter))
                       for p in m.parameters()}
    found = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) or is_conv1d(module):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.dim() >= 2 and id(parameter) not in inside_adapters:
                full = f"{module_name}.{name}" if module_name else name
                found[full.replace(".parametrizations.", ".").removesuffix(".original")] = tuple(parameter.shape)
    return found


def describe_matrices(matrices: dict[str, tuple[int, ...]]) -> str:
    """``{name: shape}`` -> "experts.gate_up_proj (4, 192, 64) x2, gate.weight (4, 64) x2" (grouped by leaf)."""
    groups = Counter(f"{'.'.join(name.split('.')[-2:])} {shape}" for name, shape in matrices.items())
    return ", ".join(f"{group} x{count}" if count > 1 else group for group, count in groups.items())


def warn_left_out(model: nn.Module, what: str, covered: Sequence[str] = (), note: str = ""
                  ) -> dict[str, tuple[int, ...]]:
    """Warn (``LeftOutWarning``) if ``model`` has matrices outside linear layers; ``what`` says what skips them.

    ``covered``: full names of tensors that are taken care of anyway (``add_lora(target_parameters=...)``);
    ``note``: a sentence added to the warning.

    Returns ``matrices_outside_linear_layers(model)``. Example: ``warn_left_out(mixtral, "add_lora('all-linear')
    adapts")`` warns "add_lora('all-linear') adapts linear layers only; left out: 6 weight matrices (71.3% of
    the parameters): experts.gate_up_proj (4, 192, 64) x2, ...".
    """
    matrices = {k: v for k, v in matrices_outside_linear_layers(model).items() if k not in covered}
    if matrices:
        total = sum(p.numel() for p in model.parameters())
        share = sum(math.prod(shape) for shape in matrices.values()) / max(total, 1)
        leaves = sorted({".".join(name.split(".")[-2:]) for name in matrices})
        warnings.warn(f"{what} linear layers only; left out: {len(matrices)} weight matrices ({share:.1%} of the "
                      f"parameters) that are not linear layers: {describe_matrices(matrices)}. In a Mixture of "
                      f"Experts these are the experts and the router: add_lora(..., target_parameters={leaves}) "
                      "adapts them, as peft's LoraConfig(target_parameters=...) does (peft's 'all-linear' adds them "
                      "itself for the model types transformers converts from the Mixtral and Qwen2-MoE layouts, "
                      "Qwen3-MoE and OLMoE included, with rank 2r on gate_up_proj, and so does add_lora's); "
                      f"bitsandbytes and prepare_qlora keep them in 16 bits.{note}", LeftOutWarning, stacklevel=3)
    return matrices
