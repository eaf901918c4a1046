"""Save a from-scratch LoRA adapter in peft's format, and load a peft adapter into ``LoRALinear`` layers.

peft stores an adapter as a directory with two files (``peft.PeftModel.save_pretrained``):

- ``adapter_config.json``: a ``peft.LoraConfig`` (r, lora_alpha, lora_dropout, target_modules, ...);
- ``adapter_model.safetensors``: for each adapted layer ``<name>`` of the base model, the tensors
  ``base_model.model.<name>.lora_A.weight`` (r, in) and ``base_model.model.<name>.lora_B.weight``
  (out, r), without the adapter name (``peft.utils.save_and_load.get_peft_model_state_dict``).

Because ``LoRALinear`` uses peft's layouts, saving is renaming: ``peft.PeftModel.from_pretrained(base,
path)`` then gives the same outputs as the model here. GPT-2's ``Conv1D`` layers are saved with
``fan_in_fan_out=True``, as peft does; A and B have the same layouts either way. Left out: peft's
per-layer ``rank_pattern`` and ``alpha_pattern`` (one r and alpha per adapter here, except for tensors:
peft's "all-linear" gives ``gate_up_proj`` 2 r, saved as peft saves it), rsLoRA, DoRA, and trained biases.
Adapters on tensors (``target_parameters``: MoE experts, ``lora_experts``) are saved under
peft's nested ``ParamWrapper`` names; ``load_peft_adapter`` does not load them back (peft does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from qlora_lessons.lora import adapter_names, add_lora, lora_layers
from qlora_lessons.lora_experts import parameter_adapters, peft_keys

CONFIG_NAME = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
PREFIX = "base_model.model."  # PeftModel wraps the base as .base_model (a LoraModel), which holds it as .model
# Config entries that change what a LoRA adapter computes, with the value under which it is plain LoRA.
# fan_in_fan_out is not among them: it only says the layers are Conv1D, which LoRALinear finds out itself.
_PLAIN_LORA = {"bias": "none", "use_rslora": False, "use_dora": False,
               "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None,
               "exclude_modules": None, "target_parameters": None}


def _target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """Leaf names (``q_proj``) if they pick exactly the adapted layers under peft's matching, else full names."""
    wrapped = lora_layers(model)
    names = [name for name, _ in model.named_modules()  # module names of the base without the LoRA insides
             if name and not any(name.startswith(prefix + ".") for prefix in wrapped)]
    leaves = sorted({name.rpartition(".")[2] for name in adapted})
    picked = [name for name in names if any(name == leaf or name.endswith("." + leaf) for leaf in leaves)]
    return leaves if sorted(picked) == sorted(adapted) else sorted(adapted)


def save_as_peft(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` that peft loads onto the same base.

    Equation: none; the tensors are renamed, A -> ``<name>.lora_A.weight``, B -> ``<name>.lora_B.weight``.
    Shapes: lora_A (r, in) and lora_B (out, r) per adapted layer, stored as they are (dtype included).
    Example: ``save_as_peft(model, "runs/qv_r4")``, then
    ``peft.PeftModel.from_pretrained(base, "runs/qv_r4")`` gives the same logits as ``model``.
    ``adapter_name`` defaults to the active adapter. Returns the directory.
    """
    import peft
    from safetensors.torch import save_file

    names = adapter_names(model)
    if not names:
        raise ValueError("the model has no LoRA adapters; call add_lora(model, ...) first")
    if adapter_name is None:
        active = {layer.active_adapter for layer in lora_layers(model).values()} - {None}
        if len(active) != 1:
            raise ValueError(f"no single active adapter; pass adapter_name, one of {names}")
        adapter_name = active.pop()
    if adapter_name not in names:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {names}")
    layers = {name: layer.adapters[adapter_name] for name, layer in lora_layers(model).items()
              if adapter_name in layer.adapters}
    tensors = {name: p for name, p in parameter_adapters(model).items() if p.adapter_name == adapter_name}
    settings = {(a.r, a.alpha, getattr(a.dropout, "p", 0.0)) for a in layers.values()}
    patterns = {}  # tensors with their own r and alpha (peft's "all-linear": 2 r on gate_up_proj)
    for leaf in sorted({name.rpartition(".")[2] for name in tensors}):
        own = {(p.r, p.alpha) for name, p in tensors.items() if name.rpartition(".")[2] == leaf}
        if len(own) == 1 and settings and (*next(iter(own)), 0.0) not in settings:
            patterns[rf".*\.{re.escape(leaf)}"] = own.pop()
        else:
            settings |= {(r, alpha, 0.0) for r, alpha in own}
    if len(settings) != 1:
        raise ValueError(f"adapter {adapter_name!r} has several (r, alpha, dropout) settings {sorted(settings)}; "
                         "save_as_peft writes one, with rank_pattern/alpha_pattern only for whole tensor leaves")
    r, alpha, dropout = settings.pop()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    parametrized, tensors = tensors, {}
    for name, adapter in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = adapter.lora_A.detach().cpu().contiguous()  # (r, in)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = adapter.lora_B.detach().cpu().contiguous()  # (out, r)
    for name, key in peft_keys(model, adapter_name).items():  # MoE experts: A (E r, in), B (out, E r)
        tensors[f"{PREFIX}{key}.lora_A.weight"] = parameter_adapters(model)[name].lora_A.detach().cpu().contiguous()
        tensors[f"{PREFIX}{key}.lora_B.weight"] = parameter_adapters(model)[name].lora_B.detach().cpu().contiguous()
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=_target_modules(model, list(layers)) if layers else [],
        target_parameters=sorted(parametrized) or None,
        rank_pattern={key: rank for key, (rank, _) in patterns.items()},
        alpha_pattern={key: alpha for key, (_, alpha) in patterns.items()},
        fan_in_fan_out=any(lora_layers(model)[name].fan_in_fan_out for name in layers),  # GPT-2's Conv1D
        task_type="CAUSAL_LM" if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")) else None,
        base_model_name_or_path=getattr(model, "name_or_path", None) or None,
    )
    config.save_pretrained(str(path))
    return path


def load_peft_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default") -> nn.Module:
    """Load a plain LoRA adapter saved by peft (or ``save_as_peft``) into ``LoRALinear`` layers of ``model``.

    Equation: ``add_lora`` with the config's r, lora_alpha, lora_dropout and target_modules, then
    lora_A <- ``<name>.lora_A.weight``, lora_B <- ``<name>.lora_B.weight``.
    Shapes: as stored; each must match (r, in) and (out, r) of the layer it lands in.
    Example: ``load_peft_adapter(base, "runs/qv_r4")`` -> the base with the adapter active. Returns the model.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} must hold {CONFIG_NAME} and {WEIGHTS_NAME} (a peft adapter directory)")
    config = json.loads((path / CONFIG_NAME).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path / CONFIG_NAME} has peft_type={config.get('peft_type')!r}; expected 'LORA'")
    for key, plain in _PLAIN_LORA.items():
        if config.get(key) not in (plain, None, {}, []):
            raise ValueError(f"{path / CONFIG_NAME} sets {key}={config.get(key)!r}; only plain LoRA "
                             f"({key}={plain!r}) can be loaded into LoRALinear")
    targets = config["target_modules"]
    if isinstance(targets, str) and targets != "all-linear":
        raise ValueError(f"target_modules={targets!r} is a regular expression; give a list of layer names")
    add_lora(model, targets, r=config["r"], lora_alpha=config["lora_alpha"],
             lora_dropout=config.get("lora_dropout", 0.0),
             adapter_name=adapter_name)
    tensors = load_file(str(path / WEIGHTS_NAME))
    expected = set()
    for name, layer in lora_layers(model).items():
        if adapter_name not in layer.adapters:
            continue
        adapter = layer.adapters[adapter_name]
        for key, parameter in ((f"{PREFIX}{name}.lora_A.weight", adapter.lora_A),
                               (f"{PREFIX}{name}.lora_B.weight", adapter.lora_B)):
            expected.add(key)
            if key not in tensors or tensors[key].shape != parameter.shape:
                found = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ValueError(f"{WEIGHTS_NAME}: {key} should have shape {tuple(parameter.shape)}, got {found}")
            with torch.no_grad():
                parameter.copy_(tensors[key])
    if set(tensors) - expected:
        raise ValueError(f"{WEIGHTS_NAME} has tensors for layers the config does not target: "
                         f"{sorted(set(tensors) - expected)[:4]}")
    return model
