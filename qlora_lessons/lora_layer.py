"""LoRA from scratch: a frozen linear layer plus a trainable low-rank update, h = W0 x + (alpha / r) B A x.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", section 4.1: the pretrained
W0 (out, in) is frozen; the update dW = B A is learned with A (r, in) and B (out, r), r << min(in, out).
A starts random and B at zero, so training starts exactly at the pretrained model; the update is
scaled by alpha / r so that changing r needs little retuning of the learning rate.

The names and layouts follow peft (``peft.tuners.lora.layer.Linear``) so that adapters move between
the two: ``lora_A`` (r, in), ``lora_B`` (out, r), ``scaling = alpha / r``, the same initialization,
the same forward order, merge by ``W0 += scaling * B @ A``. This module holds the layer; ``lora``
puts layers into a model (and re-exports ``LoRALinear``), ``lora_peft`` saves and loads peft's format.

GPT-2's linear layers are transformers' ``Conv1D``, which stores W0 transposed, (in, out), and computes
x W0 + b. ``LoRALinear`` wraps them as peft does (``fan_in_fan_out=True``): the same A (r, in) and B (out, r),
the same forward, and merging adds dW transposed, W0 += (alpha / r) (B A)^T.

Left out: LoRA on embeddings and convolutions, bias training, and the variants (rsLoRA's alpha /
sqrt(r), DoRA, ...).
"""

from __future__ import annotations

import copy
import math
import sys

import torch
from torch import nn
from torch.nn import functional as F

from qlora_lessons.renamed_arguments import renamed_arguments


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2's linear layers: weight (in, out), y = x W + b)."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")  # loaded whenever such a layer exists
    return pytorch_utils is not None and isinstance(module, pytorch_utils.Conv1D)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` (weight (out, in)) or a ``Conv1D`` (weight (in, out))."""
    if is_conv1d(module):
        in_features, out_features = module.weight.shape
        return int(in_features), int(out_features)
    return module.in_features, module.out_features


def check_lora_hyperparameters(r: int, alpha: float, dropout: float) -> None:
    """Raise ValueError/TypeError unless r is an int >= 1, lora_alpha > 0 and lora_dropout in [0, 1)."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f"r must be an int, got {type(r).__name__} {r!r}")
    if r < 1:
        raise ValueError(f"r must be >= 1, got r={r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora_alpha must be a positive number, got lora_alpha={alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be a probability in [0, 1), got lora_dropout={dropout!r}")


class LoRAAdapter(nn.Module):
    """One named low-rank update: ``lora_A`` (r, in), ``lora_B`` (out, r), ``scaling``, dropout."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device))  # (out, r): dW = 0 at the start
        # The paper (section 4.1) says "random Gaussian" for A; its code (loralib, layers.py) and peft use nn.Linear's
        # default instead, kaiming_uniform with a = sqrt(5): uniform in [-1/sqrt(in), 1/sqrt(in)]. We follow the code.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.to(dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # peft: Identity when p = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(alpha / r) B A dropout(x): (..., in) -> (..., out), in peft's order of operations."""
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling  # (..., r) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """dW = (alpha / r) B @ A, shape (out, in), the same layout as the base weight W0."""
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) W0 plus named low-rank adapters, one active at a time.

    Equation: h = W0 x + b + (alpha / r) B A dropout(x), with W0, b frozen and A, B trainable.
    Shapes: x (..., in_features) -> h (..., out_features); lora_A (r, in_features), lora_B (out_features, r).
    Example: ``layer = LoRALinear(nn.Linear(64, 32), r=4, lora_alpha=8)`` -> lora_A (4, 64), lora_B (32, 4),
    scaling 2.0, and ``layer(x) == layer.base_layer(x)`` until B is trained away from zero.

    ``lora_A``, ``lora_B``, ``r``, ``alpha``, ``scaling`` are those of the active adapter. More adapters
    are added with ``add_adapter(name, ...)`` and picked with ``set_adapter(name)`` (``None``: base alone).
    """

    @renamed_arguments(alpha="lora_alpha", dropout="lora_dropout")
    def __init__(self, base: nn.Module, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 adapter_name: str = "default") -> None:
        if not isinstance(base, nn.Linear) and not is_conv1d(base):
            raise TypeError(f"base must be a torch.nn.Linear or a transformers Conv1D, got {type(base).__name__}")
        super().__init__()
        self.base_layer = base.requires_grad_(False)  # W0 and b are frozen
        self.fan_in_fan_out = is_conv1d(base)  # Conv1D stores W0 as (in, out), as peft's fan_in_fan_out says
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None  # the adapter whose dW is currently added into W0
        self.add_adapter(adapter_name, r, lora_alpha, lora_dropout)
        self.set_adapter(adapter_name)
        self.train(base.training)  # a layer put into a model in eval mode must not start dropping out

    @property
    def in_features(self) -> int:
        return linear_features(self.base_layer)[0]

    @property
    def out_features(self) -> int:
        return linear_features(self.base_layer)[1]

    @renamed_arguments(alpha="lora_alpha", dropout="lora_dropout")
    def add_adapter(self, name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0) -> None:
        """Add a new adapter (A random, B zero) under ``name``; the active adapter does not change."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter name must be a Python identifier such as 'default', got {name!r}")
        if name in self.adapters:
            raise ValueError(f"this layer already has an adapter named {name!r}; adapters: {list(self.adapters)}")
        check_lora_hyperparameters(r, lora_alpha, lora_dropout)
        if r > min(self.in_features, self.out_features):
            raise ValueError(f"r must be <= min(in_features, out_features) = "
                             f"{min(self.in_features, self.out_features)} for a {self.base_layer}, got r={r}")
        weight = self.base_layer.weight
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32  # quantized bases store ints
        self.adapters[name] = LoRAAdapter(self.in_features, self.out_features, r, lora_alpha, lora_dropout, dtype,
                                          weight.device)

    def set_adapter(self, name: str | None) -> None:
        """Make ``name`` the active adapter (``None``: the base layer alone). Not allowed while merged."""
        if self.merged_adapter is not None:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is merged into W0; call unmerge() before switching")
        if name is not None and name not in self.adapters:
            raise ValueError(f"no adapter named {name!r}; this layer has {list(self.adapters)}")
        self.active_adapter = name

    def _active(self) -> LoRAAdapter:
        if self.active_adapter is None:
            raise RuntimeError(f"no active adapter (the base layer runs alone); adapters: {list(self.adapters)}")
        return self.adapters[self.active_adapter]

    lora_A = property(lambda self: self._active().lora_A, doc="A (r, in_features) of the active adapter")
    lora_B = property(lambda self: self._active().lora_B, doc="B (out_features, r) of the active adapter")
    r = property(lambda self: self._active().r, doc="rank of the active adapter")
    alpha = property(lambda self: self._active().alpha, doc="alpha of the active adapter")
    scaling = property(lambda self: self._active().scaling, doc="alpha / r of the active adapter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = base(x) + (alpha / r) B A dropout(x); just base(x) when merged or with no active adapter."""
        result = self.base_layer(x)  # (..., out)
        if self.merged_adapter is not None or self.active_adapter is None:
            return result
        adapter = self.adapters[self.active_adapter]
        update = adapter(x.to(adapter.lora_A.dtype))  # (..., out); peft casts the input to A's dtype too
        if not self.base_layer.weight.dtype.is_floating_point:
            # A 4-bit (bitsandbytes) base, as peft's lora.bnb.Linear4bit: the update is rounded to the output's dtype
            # first and added there (a 16-bit sum), not added in float32 and rounded after (lora.Linear's order).
            return result + update.to(result.dtype)
        return (result + update).to(result.dtype)

    def merge(self) -> None:
        """Add the active adapter's dW = (alpha / r) B A into W0: same outputs, no extra matmuls."""
        if self.merged_adapter is not None:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is already merged; call unmerge() first")
        weight = self._float_weight("merge")
        with torch.no_grad():
            weight += self._delta_in_weight_layout(self._active()).to(weight.dtype)  # (out, in); Conv1D (in, out)
        self.merged_adapter = self.active_adapter

    def unmerge(self) -> None:
        """Subtract the merged dW from W0 again; W0 comes back up to float rounding."""
        if self.merged_adapter is None:
            raise RuntimeError("nothing is merged; call merge() first")
        weight = self._float_weight("unmerge")
        with torch.no_grad():
            weight -= self._delta_in_weight_layout(self.adapters[self.merged_adapter]).to(weight.dtype)
        self.merged_adapter = None

    def _delta_in_weight_layout(self, adapter: LoRAAdapter) -> torch.Tensor:
        delta = adapter.delta_weight()  # (out, in)
        return delta.T if self.fan_in_fan_out else delta  # Conv1D: (in, out), peft's transpose(fan_in_fan_out)

    def merged_linear(self) -> nn.Module:
        """A plain ``nn.Linear`` (a ``Conv1D`` for a Conv1D base) with weight W0 + dW and the base bias.

        This layer is unchanged. dW is the active adapter's, or the merged one's if one is merged.
        """
        weight = self._float_weight("merged_linear")
        base = self.base_layer
        if self.fan_in_fan_out:  # Conv1D: a copy of the base with W0 + dW^T
            merged_conv = copy.deepcopy(base)
            if self.merged_adapter is None:
                with torch.no_grad():
                    merged_conv.weight += self._delta_in_weight_layout(self._active()).to(weight.dtype)
            return merged_conv
        linear = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            merged = weight if self.merged_adapter is not None else weight + self._active().delta_weight()
            linear.weight.copy_(merged)
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear

    def _float_weight(self, action: str) -> torch.Tensor:
        weight = self.base_layer.weight
        if not weight.dtype.is_floating_point:
            raise TypeError(f"{action} needs a floating-point W0, got {weight.dtype} (dequantize the base first)")
        return weight

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, merged={self.merged_adapter is not None}"
