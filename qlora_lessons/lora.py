"""LoRA on a whole model: wrap the targeted linear layers, freeze the rest, count, switch and merge.

The layer itself, h = W0 x + (alpha / r) B A x, is ``lora_layer.LoRALinear`` (re-exported here).
This module does what peft's ``get_peft_model`` does, by hand:

- ``add_lora(model, target_modules, r, lora_alpha, lora_dropout)`` (peft's names): replace the targeted
  ``nn.Linear`` (and GPT-2 ``Conv1D``) modules in place by ``LoRALinear``, freeze every other parameter.
  Targets are matched like peft's: a name matches a layer whose full name equals it or ends in
  ``.name``; ``"all-linear"`` takes every linear layer except the output head (peft's
  ``_maybe_include_all_linear_layers`` also leaves out ``get_output_embeddings()``, the ``lm_head``).
  MoE experts stored as 3-D tensors are not linear layers; ``"all-linear"`` adds them (and the router)
  exactly where peft's does, with peft's rule (``lora_experts.all_linear_tensors``: Mixtral, Qwen-MoE,
  OLMoE, rank 2 r on ``gate_up_proj``), and warns (``lora_coverage``) about whatever it still leaves out.
- ``count_trainable(model)`` (``lora_count``, re-exported): trainable against total parameters;
  ``count_lora_params`` before adding.
- Several named adapters on one frozen base: ``add_lora(..., adapter_name="b")``, ``set_adapter``,
  ``adapter_names``, and ``disable_adapter`` to run the base alone.
- ``merge_lora`` / ``unmerge_lora`` and ``merge_and_unload`` (plain ``nn.Linear`` layers again).

Saving and loading in peft's format is in ``lora_peft``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from qlora_lessons.lora_count import TrainableCount, count_trainable, parameter_count
from qlora_lessons.lora_coverage import warn_left_out
from qlora_lessons.lora_experts import (
    add_parameter_lora,
    all_linear_tensors,
    merge_parameter_adapters,
    parameter_adapters,
    resolve_parameters,
    unmerge_parameter_adapters,
)
from qlora_lessons.lora_layer import LoRALinear, check_lora_hyperparameters, is_conv1d, linear_features
from qlora_lessons.renamed_arguments import renamed_arguments

ALL_LINEAR = "all-linear"  # peft's INCLUDE_LINEAR_LAYERS_SHORTHAND

__all__ = ["ALL_LINEAR", "LoRALinear", "TrainableCount", "adapter_names", "add_lora", "count_lora_params",
           "count_trainable", "disable_adapter", "linear_layer_names", "lora_layers", "merge_and_unload", "merge_lora",
           "parameter_count", "set_adapter", "unmerge_lora"]


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in the model, by full name.

    Example: after ``add_lora(model, ["q_proj"])`` on a 2-layer Llama ->
    ``{"model.layers.0.self_attn.q_proj": LoRALinear(...), "model.layers.1.self_attn.q_proj": ...}``.
    """
    _check_model(model)
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def linear_layer_names(model: nn.Module) -> list[str]:
    """Full names of the layers ``add_lora`` can target: ``nn.Linear``, ``Conv1D``, ``LoRALinear`` (not its base).

    Example: a 2-layer Llama -> 15 names, ``"model.layers.0.self_attn.q_proj"`` ... ``"lm_head"``.
    """
    _check_model(model)
    wrapped = lora_layers(model)
    return [name for name, module in model.named_modules()
            if name and (name in wrapped or ((isinstance(module, nn.Linear) or is_conv1d(module))
                                              and name.rpartition(".")[0] not in wrapped))]


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters in the model, in the order they were added.

    Example: ``add_lora(model, adapter_name="qa")``, ``add_lora(model, adapter_name="style")`` -> ``["qa", "style"]``.
    """
    names = [name for layer in lora_layers(model).values() for name in layer.adapters]
    return list(dict.fromkeys(names + [tensor.adapter_name for tensor in parameter_adapters(model).values()]))


def _output_head(model: nn.Module) -> str | None:
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    head = get_output_embeddings() if callable(get_output_embeddings) else getattr(model, "lm_head", None)
    return next((name for name, module in model.named_modules() if module is head), None) if head is not None else None


def _describe_linear_layers(names: list[str]) -> str:
    counts = Counter(name.rpartition(".")[2] for name in names)
    leaves = ", ".join(f"{leaf} (x{count})" if count > 1 else leaf for leaf, count in counts.items())
    return f"{leaves}; full names look like {names[0]!r}" if names else "none"


def _resolve_targets(model: nn.Module, target_modules: str | Sequence[str], warn: str | tuple[str, str] = "",
                     covered: Sequence[str] = ()) -> list[str]:
    candidates = linear_layer_names(model)
    if target_modules == ALL_LINEAR:
        if warn:
            what, note = (warn, "") if isinstance(warn, str) else warn
            warn_left_out(model, what, covered, note)
        head = _output_head(model)
        if not [name for name in candidates if name != head]:
            raise ValueError(f"{type(model).__name__} has no linear layer besides its output head to adapt")
        return [name for name in candidates if name != head]
    targets = (target_modules,) if isinstance(target_modules, str) else target_modules
    if not isinstance(targets, (list, tuple, set)) or not targets or not all(isinstance(t, str) for t in targets):
        raise TypeError(f"target_modules must be {ALL_LINEAR!r} or a non-empty list of layer names, "
                        f"got {target_modules!r}")
    selected: dict[str, None] = {}
    for target in targets:
        matches = [name for name in candidates if name == target or name.endswith("." + target)]
        if not matches:
            raise ValueError(f"target module {target!r} matches no linear layer of {type(model).__name__}; "
                             f"its linear layers are: {_describe_linear_layers(candidates)}")
        selected.update(dict.fromkeys(matches))
    return list(selected)


def _check_rank_fits(model: nn.Module, names: list[str], r: int) -> None:
    for name in names:
        in_features, out_features = linear_features(model.get_submodule(name))
        if r > min(in_features, out_features):
            raise ValueError(f"r must be <= min(in_features, out_features) = {min(in_features, out_features)} for "
                             f"{name} ({in_features} -> {out_features}), got r={r}")


def count_lora_params(model: nn.Module, target_modules: str | Sequence[str] = ("q_proj", "v_proj"), r: int = 8,
                      target_parameters: Sequence[str] | None = None) -> int:
    """The number of parameters ``add_lora(model, target_modules, r)`` would add, without changing the model.

    Equation: sum over the targeted layers W0 (out, in) of r (in + out) (A is (r, in), B is (out, r)).
    Shapes: a model in, an int out. Example: a 2-layer Llama with hidden 64 -> ``count_lora_params(model,
    ["q_proj", "v_proj"], r=4)`` = 2 layers * 2 matrices * 4 * (64 + 64) = 2,048.
    ``memory.count_lora_parameters(config, r, target_modules)`` gives the same count from a Llama config
    alone, for models too large to build (lesson 02). ``target_parameters`` (MoE experts): E r (in + out)
    for a tensor of E (out, in) matrices; ``"all-linear"`` counts the tensors peft's "all-linear" adds.
    """
    _check_model(model)
    check_lora_hyperparameters(r, 1.0, 0.0)
    names, tensors, ranks = _plan(model, target_modules, target_parameters, r, 2.0 * r)
    _check_rank_fits(model, names, r)
    shapes = {name: model.get_parameter(name).shape for name in tensors}
    return (sum(r * sum(linear_features(layer)) for layer in map(model.get_submodule, names))
            + sum(ranks.get(n, (r,))[0] * (w[0] if len(w) == 3 else 1) * (w[-1] + w[-2]) for n, w in shapes.items()))


def _plan(model: nn.Module, target_modules: str | Sequence[str], target_parameters: Sequence[str] | None, r: int,
          lora_alpha: float, warn: str = "") -> tuple[list[str], list[str], dict[str, tuple[int, float]]]:
    """(linear layers, tensors, {tensor: (r, lora_alpha)} where not the adapter's) that add_lora would adapt."""
    if target_modules == ALL_LINEAR and target_parameters is None:
        leaves, ranks = all_linear_tensors(model, r, lora_alpha)  # peft's "all-linear" on MoE models
        if ranks:
            if warn:
                warn_left_out(model, warn, covered=list(ranks))
            head = _output_head(model)
            names = [n for n in linear_layer_names(model) if n != head and n.rpartition(".")[2] in leaves]
            return names, list(ranks), ranks
    tensors = resolve_parameters(model, target_parameters) if target_parameters is not None else []
    if warn and target_parameters is None:
        warn = (warn, f" peft's 'all-linear' leaves them out too on this model type "
                      f"({getattr(getattr(model, 'config', None), 'model_type', None)!r}).")
    names = [] if tensors and not target_modules else _resolve_targets(model, target_modules, warn, covered=tensors)
    return names, tensors, {}


@renamed_arguments(alpha="lora_alpha", dropout="lora_dropout", targets="target_modules")
def add_lora(model: nn.Module, target_modules: str | Sequence[str] = ("q_proj", "v_proj"), r: int = 8,
             lora_alpha: float = 16, lora_dropout: float = 0.0, adapter_name: str = "default",
             target_parameters: Sequence[str] | None = None) -> nn.Module:
    """Put a LoRA adapter on the targeted linear layers, in place; freeze everything else; return the model.

    Equation: each targeted layer becomes h = W0 x + (lora_alpha / r) B A dropout(x); only A and B train.
    Shapes: a layer with W0 (out, in) gets lora_A (r, in) and lora_B (out, r).
    Example: ``add_lora(model, ["q_proj", "v_proj"], r=4, lora_alpha=8)`` on a 2-layer Llama with hidden 64
    -> 4 LoRALinear layers, 4 * 4 * (64 + 64) = 2,048 trainable parameters.
    Called again with a new ``adapter_name``, it adds a second adapter on the same frozen base and makes
    it the active (and only trainable) one. ``target_parameters`` (peft's name) adapts weight tensors that
    are not linear layers, such as MoE experts (``["gate_up_proj", "down_proj"]``): ``lora_experts``.
    ``"all-linear"`` without ``target_parameters`` adapts what peft's "all-linear" adapts, MoE experts and
    routers included where peft adds them (``lora_experts.all_linear_tensors``), and warns
    (``LeftOutWarning``) about tensors outside linear layers that are still left out.
    """
    _check_model(model)
    check_lora_hyperparameters(r, lora_alpha, lora_dropout)
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise ValueError(f"adapter_name must be a Python identifier such as 'default', got {adapter_name!r}")
    if adapter_name in adapter_names(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; adapters: {adapter_names(model)}")
    if any(layer.merged_adapter is not None for layer in lora_layers(model).values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) first")
    names, tensors, ranks = _plan(model, target_modules, target_parameters, r, lora_alpha,
                                  warn="add_lora('all-linear') adapts")
    if tensors and (lora_dropout or parameter_adapters(model)):
        raise ValueError("target_parameters takes one adapter per tensor and lora_dropout=0 (as peft's ParamWrapper)"
                         f"; the tensors: {tensors[:3]}...")
    _check_rank_fits(model, names, r)  # every check before the first change, so a bad call leaves the model alone
    model.requires_grad_(False)
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, LoRALinear):
            layer.add_adapter(adapter_name, r, lora_alpha, lora_dropout)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRALinear(layer, r, lora_alpha, lora_dropout, adapter_name))
    add_parameter_lora(model, tensors, r, lora_alpha, adapter_name, ranks)
    set_adapter(model, adapter_name)
    return model


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` active and the only trainable one; ``None`` runs the frozen base alone.

    Equation: h = W0 x + (alpha_name / r_name) B_name A_name x in every layer that has adapter ``name``,
    h = W0 x in the others (as peft's ``set_adapter``). Example: ``set_adapter(model, "qa")``.
    """
    layers, tensors = lora_layers(model), parameter_adapters(model)
    if not layers and not tensors:
        raise ValueError("the model has no LoRA layers; call add_lora(model, ...) first")
    if name is not None and name not in adapter_names(model):
        raise ValueError(f"no adapter named {name!r}; the model has {adapter_names(model)}")
    if any(layer.merged_adapter is not None for layer in layers.values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) before switching")
    for layer in layers.values():
        layer.set_adapter(name if name in layer.adapters else None)  # a layer without it runs its base alone
        for adapter_name, adapter in layer.adapters.items():
            adapter.requires_grad_(adapter_name == name)
    for tensor in tensors.values():
        tensor.enabled = tensor.adapter_name == name
        tensor.requires_grad_(tensor.enabled)


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the ``with`` block the model runs its frozen base alone (as peft's ``disable_adapter``).

    Example: ``with disable_adapter(model): base_logits = model(ids).logits``; the active adapter comes back after.
    """
    layers, tensors = lora_layers(model), parameter_adapters(model)
    if not layers and not tensors:
        raise ValueError("the model has no LoRA layers; call add_lora(model, ...) first")
    if any(layer.merged_adapter is not None for layer in layers.values()) or any(
            t.merged for t in tensors.values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) first")
    previous = {name: layer.active_adapter for name, layer in layers.items()}
    enabled = {name: tensor.enabled for name, tensor in tensors.items()}
    for layer in layers.values():
        layer.set_adapter(None)
    for tensor in tensors.values():
        tensor.enabled = False
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.set_adapter(previous[name])
        for name, tensor in tensors.items():
            tensor.enabled = enabled[name]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge each layer's active adapter into its W0, in place; ``unmerge_lora`` undoes it.

    Equation: W0 <- W0 + (alpha / r) B A, so h = W0 x: the same outputs with no extra matmuls.
    Shapes: B A is (out, in), like W0. Example: ``merge_lora(model)``, generate, ``unmerge_lora(model)``.
    """
    for layer in lora_layers(model).values():
        if layer.active_adapter is not None:
            layer.merge()
    merge_parameter_adapters(model)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter from its W0 again: W0 <- W0 - (alpha / r) B A (exact up to float rounding)."""
    for layer in lora_layers(model).values():
        if layer.merged_adapter is not None:
            layer.unmerge()
    unmerge_parameter_adapters(model)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain ``nn.Linear`` holding W0 + (alpha / r) B A, in place (as peft's).

    Example: ``merge_and_unload(model)`` -> the model with no ``LoRALinear`` left, for deployment.
    """
    for name, layer in lora_layers(model).items():
        merged = layer.merged_linear() if layer.active_adapter is not None else layer.base_layer
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, merged.requires_grad_(False))
    merge_parameter_adapters(model, unload=True)
    return model
