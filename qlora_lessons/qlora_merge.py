"""Merging a LoRA update into a 4-bit base: dequantize, add, quantize again, and how much of dW survives.

A QLoRA model computes h = W4 x + dW x with W4 = dequant(W_nf4) and dW = (alpha / r) B A (QLoRA,
Dettmers et al. 2023, section 3, equation 5; LoRA, Hu et al. 2021, equation 3). Merging for deployment
folds dW into the weight. Into a 16-bit copy that is exact up to the copy's rounding (lesson 08,
section 7). Into the 4-bit base, as peft's ``merge_and_unload`` does on a bitsandbytes ``Linear4bit``
(``peft.tuners.lora.bnb.Linear4bit.merge``: ``dequantize_4bit``, add ``get_delta_weight``, ``Params4bit``
quantizes again), the merged weight is

    W4' = dequant(quant(W4 + dW))

and only what moves a value across a rounding boundary (or changes its block's absmax) survives. A dW
much smaller than the gap between two NF4 levels (about absmax / 10) is mostly rounded away.

``merge_retention(weights, deltas)`` measures it: the share of dW that W4' - W4 keeps along dW's
direction, kept = <W4' - W4, dW> / ||dW||^2 (1: all of it; 0: none), and the error left,
||W4' - W4 - dW|| / ||dW||, summed over any number of layers.

``dequantize_model(model, dtype)`` takes the other road: every 4-bit layer (bitsandbytes ``Linear4bit``,
inside a ``LoRALinear`` too, and this library's ``QLoRALinear``) becomes an ``nn.Linear`` holding
dequant(W_nf4) in a 16-bit dtype, so that ``merge_lora`` / ``merge_and_unload`` add dW exactly there.

Left out: stochastic rounding, and merging several adapters at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qlora_lessons.blockwise import check_blocksize, check_float_tensor
from qlora_lessons.course_extra import course_import
from qlora_lessons.lora_layer import LoRALinear
from qlora_lessons.nf4 import QUANT_TYPES, dequantize_4bit, quantize_4bit
from qlora_lessons.qlora import QLoRALinear


@dataclass(frozen=True)
class MergeRetention:
    """What a merge into a 4-bit weight keeps of an update dW, over one or more layers."""

    kept: float  # <W4' - W4, dW> / ||dW||^2: the share of dW that survives along its direction
    error: float  # ||W4' - W4 - dW|| / ||dW||: what the merged weight misses of dW, relative to dW
    update_norm: float  # ||dW|| (all layers)
    weight_norm: float  # ||W4|| (all layers)

    @property
    def relative_size(self) -> float:
        """||dW|| / ||W4||: how large the update is next to the weight it is merged into."""
        return self.update_norm / self.weight_norm

    def __repr__(self) -> str:
        return (f"MergeRetention(kept {self.kept:.1%} of dW, error {self.error:.1%} of |dW|, "
                f"|dW| / |W4| = {self.relative_size:.2%})")


def merge_4bit(w4: torch.Tensor, delta: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64,
               double_quant: bool = True) -> torch.Tensor:
    """The weight a merge into 4 bits stores, dequantized: W4' = dequant(quant(W4 + dW)), in float32.

    Shapes: w4 (out, in), delta (out, in) -> (out, in) float32.
    Example: ``merge_4bit(w4, torch.zeros_like(w4))`` gives back ``w4`` when w4 is itself 4-bit
    (absmax maps to the level 1 exactly); a dW of a few percent of |W4| mostly comes back as zero.
    Source: peft ``Linear4bit.merge`` (dequantize, add, ``bnb.nn.Params4bit`` quantizes again).
    """
    check_float_tensor(w4, "w4")
    check_float_tensor(delta, "delta")
    if w4.shape != delta.shape:
        raise ValueError(f"delta must have w4's shape {tuple(w4.shape)}, got {tuple(delta.shape)}")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    check_blocksize(blocksize)
    merged = w4.detach().float() + delta.detach().float()
    return dequantize_4bit(*quantize_4bit(merged, blocksize, quant_type, double_quant)).float()


def merge_retention(weights: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor],
                    merged: Sequence[torch.Tensor] | None = None, quant_type: str = "nf4", blocksize: int = 64,
                    double_quant: bool = True) -> MergeRetention:
    """How much of dW a merge into 4 bits keeps, over layers: kept = sum <W4' - W4, dW> / sum ||dW||^2.

    ``weights`` are the dequantized 4-bit weights W4, ``deltas`` the updates dW = (alpha / r) B A, one per
    layer. ``merged`` are the merged weights W4' as some merge stored them (peft's, dequantized); without
    it they are computed with ``merge_4bit``.
    Equation: kept = sum_l <W4'_l - W4_l, dW_l> / sum_l ||dW_l||^2; error = ||W4' - W4 - dW|| / ||dW||.
    Shapes: each weight and delta (out, in), the same shape pairwise.
    Example: a delta of 1% of |W4| on N(0, 0.02^2) weights keeps only a few percent; at 20% nearly all.
    """
    weights, deltas = list(weights), list(deltas)
    merged = None if merged is None else list(merged)
    if not weights or len(weights) != len(deltas):
        raise ValueError(f"weights and deltas must be non-empty and of equal length, got {len(weights)} and "
                         f"{len(deltas)}")
    if merged is not None and len(merged) != len(weights):
        raise ValueError(f"merged must have one tensor per weight ({len(weights)}), got {len(merged)}")
    inner = delta_sq = miss_sq = weight_sq = 0.0
    for i, (w4, delta) in enumerate(zip(weights, deltas, strict=True)):
        new = (merge_4bit(w4, delta, quant_type, blocksize, double_quant) if merged is None
               else merged[i].detach().float())
        if new.shape != w4.shape:
            raise ValueError(f"merged[{i}] must have the weight's shape {tuple(w4.shape)}, got {tuple(new.shape)}")
        moved, d = new - w4.detach().float(), delta.detach().float()  # (out, in) each
        inner += float((moved * d).sum(dtype=torch.float64))
        delta_sq += float(d.double().square().sum())
        miss_sq += float((moved - d).double().square().sum())
        weight_sq += float(w4.detach().double().square().sum())
    if delta_sq == 0.0:
        raise ValueError("deltas are all zero: there is no update to keep")
    return MergeRetention(inner / delta_sq, (miss_sq / delta_sq) ** 0.5, delta_sq ** 0.5, weight_sq ** 0.5)


def plot_merge_retention(results: Mapping[float, MergeRetention]):
    """Share of dW kept by a merge into 4 bits against the update's size ||dW|| / ||W4||, one point per result.

    Shapes: results maps a label (e.g. the scale k of k dW) to a MergeRetention -> a figure.
    Example: ``plot_merge_retention({k: merge_retention(W4, [k * d for d in dW]) for k in (1, 4, 16)})``.
    """
    plt = course_import("matplotlib.pyplot")

    if not results or not all(isinstance(r, MergeRetention) for r in results.values()):
        raise TypeError("results must map labels to MergeRetention objects (what merge_retention returns)")
    sizes = [r.relative_size for r in results.values()]
    fig, ax = plt.subplots(figsize=(5.2, 2.6), layout="constrained")
    ax.plot(sizes, [r.kept for r in results.values()], "o-", label="kept along dW")
    ax.plot(sizes, [r.error for r in results.values()], "s--", label="error left, / |dW|")
    for label, size, r in zip(results, sizes, results.values(), strict=True):
        ax.annotate(f"x{label}", (size, r.kept), textcoords="offset points", xytext=(3, 4), fontsize="x-small")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="|dW| / |W4|", ylabel="share of |dW|", title="merging dW into a 4-bit weight")
    ax.legend(fontsize="small")
    plt.close(fig)
    return fig


def _dequantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)  # (out, in)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.requires_grad_(False)  # a frozen base, as the 4-bit weight was


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace every 4-bit linear layer by an ``nn.Linear`` holding W = dequant(W_nf4) in ``dtype``, in place.

    bitsandbytes ``Linear4bit`` layers (also as the base of a ``LoRALinear``) become ``nn.Linear``; a
    ``QLoRALinear`` becomes a ``LoRALinear`` around one, keeping its adapter. Then ``merge_lora`` and
    ``merge_and_unload`` work: W <- dequant(W_nf4) + (lora_alpha / r) B A, with no second quantization.
    A transformers model also loses its quantization config (as ``PreTrainedModel.dequantize`` does).
    Returns the model.

    Precision: the merged weights are the dequantized NF4 weights plus dW, not the original checkpoint's
    weights plus dW. They differ from the original by the 4-bit rounding error (lesson 05: a few percent
    of each weight), which is also what the adapter was trained against (QLoRA, Dettmers et al. 2023,
    section 3, equation 5). Merging the adapter into the original 16-bit weights instead (load the
    checkpoint in 16 bits, then the adapter: ``save_as_peft``, ``load_peft_adapter``) gives a model that
    is not the one that was trained. In bfloat16 the weights are also rounded to 8 significant bits.
    Shapes: each weight (out, in) in ``dtype``. Example: ``merge_and_unload(dequantize_model(model))``.
    Source: transformers ``integrations.bitsandbytes.dequantize_bnb_weight`` (``dequantize_4bit``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    replaced = 0
    for name, module in list(model.named_modules()):
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if isinstance(module, nn.Linear) and state is not None:  # bitsandbytes Linear4bit (Params4bit weight)
            import bitsandbytes.functional as bnb_functional

            weight = bnb_functional.dequantize_4bit(module.weight.data, state).to(dtype)
            new: nn.Module = _dequantized_linear(weight, module.bias, dtype)
        elif isinstance(module, QLoRALinear):
            new = LoRALinear(_dequantized_linear(module.dequantize_weight().to(dtype), module.bias, dtype),
                             module.r, module.alpha)
            new.adapters["default"] = module.adapter  # the trained A and B, as they are
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new.train(module.training))
        replaced += 1
    if replaced == 0:
        raise ValueError(f"{type(model).__name__} has no 4-bit layer (bitsandbytes Linear4bit or QLoRALinear)")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model
