"""AdamW's update, by hand: the arithmetic that every optimizer of lesson 07 shares.

Adam (Kingma & Ba 2015, Algorithm 1) keeps two running averages per trainable element: the first
moment m (exp_avg, a running mean of the gradient g) and the second moment v (exp_avg_sq, a running mean
of g * g). AdamW (Loshchilov & Hutter 2019, Algorithm 2) decays the weights apart from the gradient. For
step t = 1, 2, ...:

    W <- W * (1 - lr * weight_decay)                                  decoupled weight decay
    m <- beta1 * m + (1 - beta1) * g                                  first moment
    v <- beta2 * v + (1 - beta2) * g * g                              second moment
    W <- W - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   bias-corrected step

m and v are the optimizer state: 8 bytes per parameter in float32, twice the weights. ``paging.OffloadedAdamW``
keeps them in host memory and updates a page at a time; ``adam8bit.AdamW8bit`` stores them in 8 bits and
dequantizes them for each update. Both call ``adamw_update_``, so each is AdamW wherever its state is exact.

Left out: AMSGrad, ``maximize``, the fused and foreach kernels (same numbers, other order of operations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_adamw_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict:
    """Check AdamW's hyperparameters and return them as an optimizer's ``defaults`` dict.

    Rules: lr >= 0, betas a pair with each in [0, 1), eps > 0, weight_decay >= 0, all finite; a bad one
    raises TypeError or ValueError naming it.
    Shapes: scalars -> {"lr", "betas", "eps", "weight_decay"}.
    Example: ``check_adamw_hyperparameters(1e-3, (0.9, 0.999), 1e-8, 0)["weight_decay"] -> 0.0``.
    """
    lr, eps = _check_number("lr", lr), _check_number("eps", eps)
    weight_decay = _check_number("weight_decay", weight_decay)
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if not 0.0 <= _check_number(f"betas[{index}]", beta) < 1.0:
            raise ValueError(f"betas[{index}] must be in [0, 1), got {beta!r}")
    return {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps, "weight_decay": weight_decay}


@torch.no_grad()
def adamw_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                  step: float, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """One AdamW update of ``param``, ``exp_avg`` (m) and ``exp_avg_sq`` (v), in place, at step t = ``step``.

    Equations: the module docstring's four lines, in torch.optim.AdamW's order of operations
    (m by ``lerp``, which is beta1 * m + (1 - beta1) * g), so the result equals torch's to the last bit.
    Source: torch.optim.adam._single_tensor_adam with decoupled weight decay.
    Shapes: param, grad, exp_avg, exp_avg_sq all of one shape (or equal slices of flat tensors).
    Example: W 1.0, g 0.5, m = v = 0, t 1, lr 0.1, no decay -> m 0.05, v 0.00025 and
    W = 1 - 0.1 / 0.1 * 0.05 / (0.0158 / 0.0316 + 1e-8) = 0.9: the first step moves every weight by lr.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
