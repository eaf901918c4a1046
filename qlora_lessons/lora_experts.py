"""LoRA on weight tensors that are not linear layers: MoE experts and routers (peft's target_parameters).

transformers 5 keeps all the experts of a MoE block in two 3-D parameters, ``mlp.experts.gate_up_proj``
(E, 2 I, H) and ``mlp.experts.down_proj`` (E, H, I), one (out, in) matrix per expert, and the router in a
2-D ``mlp.gate.weight`` (E, H). peft 0.21 adapts such tensors with ``LoraConfig(target_parameters=[...])``
(``peft.tuners.lora.layer.ParamWrapper``): for a tensor of E matrices (out, in), one A and one B per expert,
stacked as A (E r, in) and B (out, E r), and during the forward pass the tensor is replaced by

    W_e + (lora_alpha / r) B_e A_e   for each expert e,   A_e = A[e r:(e + 1) r],  B_e = B[:, e::E]

(peft's ``get_delta_weight``: A reshaped (E, r, in), B reshaped (out, r, E)). A 2-D tensor is one matrix,
W + (lora_alpha / r) B A. Here the same happens through ``torch.nn.utils.parametrize``: ``LoRAParameter``
is a parametrization W -> W + dW on the tensor, so the model's own forward code runs unchanged.

- ``add_lora(model, ..., target_parameters=["gate_up_proj", "down_proj"])`` calls ``add_parameter_lora``;
- ``parameter_adapters(model)``: every ``LoRAParameter``, by the name of the tensor it adapts;
- ``all_linear_tensors(model, r, lora_alpha)``: what peft's ``"all-linear"`` adapts beyond linear layers,
  by peft's own rule (``peft.utils.transformers_weight_conversion.convert_peft_config_for_transformers``:
  for the model types whose MoE layout changed from transformers 4, mapped to Mixtral or Qwen2-MoE by
  transformers' ``conversion_mapping``, which includes Qwen3-MoE and OLMoE, it turns "all-linear" into
  the attention's linear layers plus ``target_parameters`` router ``gate.weight``, ``gate_up_proj`` and
  ``down_proj``, with ``rank_pattern`` / ``alpha_pattern`` 2 r and 2 lora_alpha on ``gate_up_proj``, the
  fused old w1 and w3); ``add_lora(model, "all-linear")`` uses it.

Left out: several adapters on one tensor, dropout (peft refuses it too), quantized tensors.
Each access to the tensor rebuilds dW (E r (in + out) multiply-adds per expert): fine for small models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize


class LoRAParameter(nn.Module):
    """A parametrization W -> W + (lora_alpha / r) B A of a 2-D (out, in) or 3-D (E, out, in) weight tensor.

    Shapes: W (out, in): A (r, in), B (out, r); W (E, out, in): A (E r, in), B (out, E r), peft's layouts.
    Example: ``LoRAParameter((4, 192, 64), r=2, lora_alpha=4)`` -> A (8, 64), B (192, 8), 2,048 parameters.
    """

    def __init__(self, shape: Sequence[int], r: int, lora_alpha: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, adapter_name: str = "default") -> None:
        if len(shape) not in (2, 3):
            raise ValueError(f"LoRA on a parameter needs a 2-D (out, in) or 3-D (experts, out, in) tensor, got {shape}")
        super().__init__()
        self.num_experts, self.out_features, self.in_features = (1, *shape) if len(shape) == 2 else tuple(shape)
        self.ndim, self.r, self.alpha, self.scaling = len(shape), r, lora_alpha, lora_alpha / r
        self.adapter_name, self.enabled, self.merged = adapter_name, True, False
        self.lora_A = nn.Parameter(torch.empty(self.num_experts * r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.num_experts * r, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft
        self.to(dtype)

    def delta_weight(self) -> torch.Tensor:
        """dW, the shape of W: (out, in), or (E, out, in) with dW_e = scaling B_e A_e."""
        if self.ndim == 2:
            return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in)
        a = self.lora_A.reshape(self.num_experts, self.r, self.in_features)  # (E, r, in)
        b = self.lora_B.reshape(self.out_features, self.r, self.num_experts)  # (out, r, E)
        return torch.einsum("ore,eri->eoi", b, a) * self.scaling  # (E, out, in)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.merged:
            return weight
        return weight + self.delta_weight().to(weight.dtype)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, enabled={self.enabled}, merged={self.merged}")


def parameter_adapters(model: nn.Module) -> dict[str, LoRAParameter]:
    """Every ``LoRAParameter`` of the model, by the full name of the tensor it adapts (``...experts.down_proj``)."""
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name, parametrizations in module.parametrizations.items():
                for p in parametrizations:
                    if isinstance(p, LoRAParameter):
                        found[f"{module_name}.{name}" if module_name else name] = p
    return found


def resolve_parameters(model: nn.Module, target_parameters: Sequence[str]) -> list[str]:
    """Full names of the tensors ``target_parameters`` match: the name itself or a ``.name`` suffix (peft's rule)."""
    if isinstance(target_parameters, str) or not target_parameters or not all(
            isinstance(t, str) for t in target_parameters):
        raise TypeError(f"target_parameters must be a non-empty list of parameter names such as ['down_proj'], "
                        f"got {target_parameters!r}")
    names = [f"{m}.{p}" if m else p for m, module in model.named_modules() if not isinstance(module, LoRAParameter)
             for p, _ in module.named_parameters(recurse=False)]
    for target in target_parameters:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ValueError(f"target parameter {target!r} matches no parameter of {type(model).__name__}")
    # in the model's order, which is the order peft nests its ParamWrappers in (see peft_keys)
    return [n for n in names if any(n == target or n.endswith("." + target) for target in target_parameters)]


def peft_keys(model: nn.Module, adapter_name: str = "default") -> dict[str, str]:
    """Full tensor name -> the module name peft stores its A and B under (``<key>.lora_A.weight``).

    peft wraps each targeted tensor of a module in a ``ParamWrapper``, in the module's parameter order, each
    around the previous one, so the first tensor's adapter sits deepest: for ``experts`` with gate_up_proj and
    down_proj adapted, ``experts.base_layer`` (gate_up_proj) and ``experts`` (down_proj).
    """
    adapted = [n for n, p in parameter_adapters(model).items() if p.adapter_name == adapter_name]
    keys = {}
    for name in adapted:
        module_name = name.rpartition(".")[0]
        siblings = [n for n in adapted if n.rpartition(".")[0] == module_name]  # registration = model order
        keys[name] = module_name + ".base_layer" * (len(siblings) - 1 - siblings.index(name))
    return keys


def all_linear_tensors(model: nn.Module, r: int, lora_alpha: float) -> tuple[list[str], dict[str, tuple[int, float]]]:
    """What peft's ``LoraConfig(target_modules="all-linear", r, lora_alpha)`` adapts on ``model``, by peft's rule.

    Returns (linear layer names peft keeps as target_modules, {full tensor name: (r, lora_alpha)} for its
    ``target_parameters``); ``([], {})`` where peft's "all-linear" means the linear layers only (every
    dense model; MoE types that transformers' ``conversion_mapping`` does not map to Mixtral or Qwen2-MoE).
    Example: a 2-layer Mixtral, r=4, lora_alpha=8 -> (["q_proj", "k_proj", "v_proj", "o_proj"] in some order,
    {"model.layers.0.mlp.gate.weight": (4, 8), "model.layers.0.mlp.experts.gate_up_proj": (8, 16),
    "model.layers.0.mlp.experts.down_proj": (4, 8), ...}).
    Source: peft 0.21, ``peft/utils/transformers_weight_conversion.py`` (``_convert_peft_config_moe``).
    """
    import peft
    from peft.utils.other import get_pattern_key
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    config = peft.LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear")
    convert_peft_config_for_transformers(config, model, conversions=None)
    if isinstance(config.target_modules, str) or not config.target_parameters:
        return [], {}
    tensors = resolve_parameters(model, sorted(config.target_parameters))
    return sorted(config.target_modules), {
        name: (config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), r),
               config.alpha_pattern.get(get_pattern_key(config.alpha_pattern, name), lora_alpha)) for name in tensors}


def add_parameter_lora(model: nn.Module, names: Sequence[str], r: int, lora_alpha: float,
                       adapter_name: str = "default", ranks: Mapping[str, tuple[int, float]] | None = None
                       ) -> list[str]:
    """Put a ``LoRAParameter`` on each named tensor (full names, from ``resolve_parameters``); return the names.

    ``ranks``: {full name: (r, lora_alpha)} for tensors that take their own (peft's rank_pattern, alpha_pattern).
    """
    settings = {name: (ranks or {}).get(name, (r, lora_alpha)) for name in names}
    for name in names:
        module_name, _, tensor = name.rpartition(".")
        weight = getattr(model.get_submodule(module_name), tensor)
        if weight.dim() == 3 and getattr(model.get_submodule(module_name), "is_transposed", False):
            raise ValueError(f"{name} stores its experts as (E, in, out) (is_transposed); only (E, out, in) is "
                             "supported here")
        if weight.dim() not in (2, 3) or settings[name][0] > min(weight.shape[-2:]):
            raise ValueError(f"{name} {tuple(weight.shape)}: LoRA needs a 2-D or 3-D tensor with r <= "
                             f"min(out, in), got r={settings[name][0]}")
    for name in names:
        module_name, _, tensor = name.rpartition(".")
        module = model.get_submodule(module_name)
        weight = getattr(module, tensor)
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        parametrize.register_parametrization(
            module, tensor, LoRAParameter(tuple(weight.shape), *settings[name], dtype, weight.device, adapter_name),
            unsafe=True)
        module.parametrizations[tensor].original.requires_grad_(False)  # the base stays frozen
    return list(names)


def merge_parameter_adapters(model: nn.Module, unload: bool = False) -> None:
    """Add each enabled adapter's dW into its tensor (W <- W + dW); ``unload`` also removes the parametrization."""
    for name, adapter in parameter_adapters(model).items():
        module_name, _, tensor = name.rpartition(".")
        module = model.get_submodule(module_name)
        original = module.parametrizations[tensor].original
        if adapter.enabled and not adapter.merged:
            with torch.no_grad():
                original += adapter.delta_weight().to(original.dtype)
            adapter.merged = True
        if unload:
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)


def unmerge_parameter_adapters(model: nn.Module) -> None:
    """Subtract each merged adapter's dW from its tensor again."""
    for name, adapter in parameter_adapters(model).items():
        if adapter.merged:
            module_name, _, tensor = name.rpartition(".")
            original = model.get_submodule(module_name).parametrizations[tensor].original
            with torch.no_grad():
                original -= adapter.delta_weight().to(original.dtype)
            adapter.merged = False
