"""Counting a model's parameters for LoRA: how many train, out of how many, and the bytes they take.

``count_trainable(model)`` counts the parameters with ``requires_grad`` against all of them, shared
(tied) tensors once, as peft's ``get_nb_trainable_parameters`` does. A 4-bit weight loaded through
bitsandbytes (``Params4bit``) holds two 4-bit codes per uint8 element, so its ``numel()`` is half its
weights: ``parameter_count`` counts out * in (its ``quant_state.shape``), as peft does (it multiplies by 2),
so the trainable share of a 4-bit model is not overstated.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    parameters = list(model.parameters())  # deduplicated: tied weights count once
    total = sum(map(parameter_count, parameters))
    if total == 0:
        raise ValueError(f"model {type(model).__name__} has no parameters")
    trainable = [p for p in parameters if p.requires_grad]
    n_trainable = sum(map(parameter_count, trainable))
    return TrainableCount(trainable=n_trainable, total=total, fraction=n_trainable / total,
                          trainable_bytes=sum(p.numel() * p.element_size() for p in trainable))
