"""LoRA on a whole model: wrap the targeted linear layers, freeze the rest, count, switch and merge.

The layer itself, h = W0 x + (alpha / r) B A x, is ``lora_layer.LoRALinear`` (re-exported here).
This module does what peft's ``get_peft_model`` does, by hand:

- ``add_lora(model, target_modules, r, lora_alpha, lora_dropout)`` (peft's names): replace the targeted
  ``nn.Linear`` (and GPT-2 ``Conv1D``) modules in place by ``LoRALinear``, freeze every other parameter.
  Targets are matched like peft's: a name matches a layer whose full name equals it or ends in
  ``.name``; ``"all-linear"`` takes every linear layer except the output head (peft's
  ``_maybe_include_all_linear_layers`` also leaves out ``get_output_embeddings()``, the ``lm_head``).
  MoE experts stored as 3-D tensors are not linear layers: ``"all-linear"`` warns that it leaves them
  out (``lora_coverage``).
- ``count_trainable(model)``: trainable against total parameters; ``count_lora_params`` before adding.
- Several named adapters on one frozen base: ``add_lora(..., adapter_name="b")``, ``set_adapter``,
  ``adapter_names``, and ``disable_adapter`` to run the base alone.
- ``merge_lora`` / ``unmerge_lora`` and ``merge_and_unload`` (plain ``nn.Linear`` layers again).

Saving and loading in peft's format is in ``lora_peft``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from qlora_lessons.lora_coverage import warn_left_out
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
    return list(dict.fromkeys(name for layer in lora_layers(model).values() for name in layer.adapters))


def _output_head(model: nn.Module) -> str | None:
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    head = get_output_embeddings() if callable(get_output_embeddings) else getattr(model, "lm_head", None)
    return next((name for name, module in model.named_modules() if module is head), None) if head is not None else None


def _describe_linear_layers(names: list[str]) -> str:
    counts = Counter(name.rpartition(".")[2] for name in names)
    leaves = ", ".join(f"{leaf} (x{count})" if count > 1 else leaf for leaf, count in counts.items())
    return f"{leaves}; full names look like {names[0]!r}" if names else "none"


def _resolve_targets(model: nn.Module, target_modules: str | Sequence[str], warn: str = "") -> list[str]:
    candidates = linear_layer_names(model)
    if target_modules == ALL_LINEAR:
        if warn:
            warn_left_out(model, warn)
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


def count_lora_params(model: nn.Module, target_modules: str | Sequence[str] = ("q_proj", "v_proj"), r: int = 8) -> int:
    """The number of parameters ``add_lora(model, target_modules, r)`` would add, without changing the model.

    Equation: sum over the targeted layers W0 (out, in) of r (in + out) (A is (r, in), B is (out, r)).
    Shapes: a model in, an int out. Example: a 2-layer Llama with hidden 64 -> ``count_lora_params(model,
    ["q_proj", "v_proj"], r=4)`` = 2 layers * 2 matrices * 4 * (64 + 64) = 2,048.
    ``memory.count_lora_parameters(config, r, targets)`` gives the same count from a Llama config alone, for
    models too large to build (lesson 02).
    """
    _check_model(model)
    check_lora_hyperparameters(r, 1.0, 0.0)
    names = _resolve_targets(model, target_modules)
    _check_rank_fits(model, names, r)
    return sum(r * sum(linear_features(layer)) for layer in map(model.get_submodule, names))


@renamed_arguments(alpha="lora_alpha", dropout="lora_dropout", targets="target_modules")
def add_lora(model: nn.Module, target_modules: str | Sequence[str] = ("q_proj", "v_proj"), r: int = 8,
             lora_alpha: float = 16, lora_dropout: float = 0.0, adapter_name: str = "default") -> nn.Module:
    """Put a LoRA adapter on the targeted linear layers, in place; freeze everything else; return the model.

    Equation: each targeted layer becomes h = W0 x + (lora_alpha / r) B A dropout(x); only A and B train.
    Shapes: a layer with W0 (out, in) gets lora_A (r, in) and lora_B (out, r).
    Example: ``add_lora(model, ["q_proj", "v_proj"], r=4, lora_alpha=8)`` on a 2-layer Llama with hidden 64
    -> 4 LoRALinear layers, 4 * 4 * (64 + 64) = 2,048 trainable parameters.
    Called again with a new ``adapter_name``, it adds a second adapter on the same frozen base and makes
    it the active (and only trainable) one.
    """
    _check_model(model)
    check_lora_hyperparameters(r, lora_alpha, lora_dropout)
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise ValueError(f"adapter_name must be a Python identifier such as 'default', got {adapter_name!r}")
    if adapter_name in adapter_names(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; adapters: {adapter_names(model)}")
    if any(layer.merged_adapter is not None for layer in lora_layers(model).values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) first")
    names = _resolve_targets(model, target_modules, warn="add_lora('all-linear') adapts")
    _check_rank_fits(model, names, r)  # every check before the first change, so a bad call leaves the model alone
    model.requires_grad_(False)
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, LoRALinear):
            layer.add_adapter(adapter_name, r, lora_alpha, lora_dropout)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRALinear(layer, r, lora_alpha, lora_dropout, adapter_name))
    set_adapter(model, adapter_name)
    return model


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` active and the only trainable one; ``None`` runs the frozen base alone.

    Equation: h = W0 x + (alpha_name / r_name) B_name A_name x in every layer that has adapter ``name``,
    h = W0 x in the others (as peft's ``set_adapter``). Example: ``set_adapter(model, "qa")``.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora(model, ...) first")
    if name is not None and name not in adapter_names(model):
        raise ValueError(f"no adapter named {name!r}; the model has {adapter_names(model)}")
    if any(layer.merged_adapter is not None for layer in layers.values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) before switching")
    for layer in layers.values():
        layer.set_adapter(name if name in layer.adapters else None)  # a layer without it runs its base alone
        for adapter_name, adapter in layer.adapters.items():
            adapter.requires_grad_(adapter_name == name)


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the ``with`` block the model runs its frozen base alone (as peft's ``disable_adapter``).

    Example: ``with disable_adapter(model): base_logits = model(ids).logits``; the active adapter comes back after.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora(model, ...) first")
    if any(layer.merged_adapter is not None for layer in layers.values()):
        raise RuntimeError("an adapter is merged into the base weights; call unmerge_lora(model) first")
    previous = {name: layer.active_adapter for name, layer in layers.items()}
    for layer in layers.values():
        layer.set_adapter(None)
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.set_adapter(previous[name])


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge each layer's active adapter into its W0, in place; ``unmerge_lora`` undoes it.

    Equation: W0 <- W0 + (alpha / r) B A, so h = W0 x: the same outputs with no extra matmuls.
    Shapes: B A is (out, in), like W0. Example: ``merge_lora(model)``, generate, ``unmerge_lora(model)``.
    """
    for layer in lora_layers(model).values():
        if layer.active_adapter is not None:
            layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter from its W0 again: W0 <- W0 - (alpha / r) B A (exact up to float rounding)."""
    for layer in lora_layers(model).values():
        if layer.merged_adapter is not None:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain ``nn.Linear`` holding W0 + (alpha / r) B A, in place (as peft's).

    Example: ``merge_and_unload(model)`` -> the model with no ``LoRALinear`` left, for deployment.
    """
    for name, layer in lora_layers(model).items():
        merged = layer.merged_linear() if layer.active_adapter is not None else layer.base_layer
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, merged.requires_grad_(False))
    return model


def _human_bytes(n_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes} bytes"


@dataclass(frozen=True)
class TrainableCount:
    """How many of a model's parameters train, and the bytes those take (the size of a saved adapter)."""

    trainable: int
    total: int
    fraction: float  # trainable / total
    trainable_bytes: int

    def __repr__(self) -> str:
        return (f"trainable {self.trainable:,} of {self.total:,} parameters ({self.fraction:.2%}), "
                f"{_human_bytes(self.trainable_bytes)}")


def parameter_count(parameter: nn.Parameter) -> int:
    """The number of weights a parameter holds: its numel, or for a bitsandbytes 4-bit weight the original out * in.

    bitsandbytes' ``Params4bit`` stores two 4-bit codes per uint8 byte, so its ``numel()`` is half the weights
    (``quant_state.shape`` keeps the real shape). Example: a 4-bit (64, 64) weight -> 4,096, not 2,048.
    """
    state = getattr(parameter, "quant_state", None)
    return int(state.shape.numel()) if state is not None and hasattr(state, "shape") else parameter.numel()


def count_trainable(model: nn.Module) -> TrainableCount:
    """Count the parameters with ``requires_grad`` against all parameters (shared ones once, as peft does).

    Equation: fraction = trainable / total; with LoRA, trainable = sum over adapted layers of r (in + out).
    A 4-bit weight (bitsandbytes ``Params4bit``) counts its out * in weights (``parameter_count``), not its bytes.
    Shapes: a model in, a TrainableCount out.
    Example: a 2-layer Llama (hidden 64, MLP 128, vocab 100) after ``add_lora(model, r=4)`` on q_proj, v_proj ->
    ``trainable 2,048 of 97,088 parameters (2.11%), 8.19 kB``.
    """
    _check_model(model)
    parameters = list(model.parameters())  # deduplicated: tied weights count once
    total = sum(map(parameter_count, parameters))
    if total == 0:
        raise ValueError(f"model {type(model).__name__} has no parameters")
    trainable = [p for p in parameters if p.requires_grad]
    n_trainable = sum(map(parameter_count, trainable))
    return TrainableCount(trainable=n_trainable, total=total, fraction=n_trainable / total,
                          trainable_bytes=sum(p.numel() * p.element_size() for p in trainable))
