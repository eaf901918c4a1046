"""Exercises for 04_lora_from_scratch: trainable parameters of a 7B model, adapter bytes, the forward, merging.

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qlora_lessons.exercises import agrees, report
from qlora_lessons.lora import LoRALinear


def _layer_with(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> LoRALinear:
    """The library's layer holding the given W0 (out, in), A (r, in), B (out, r); no bias."""
    layer = LoRALinear(nn.Linear(W0.shape[1], W0.shape[0], bias=False), r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        layer.base_layer.weight.copy_(W0), layer.lora_A.copy_(A), layer.lora_B.copy_(B)
    return layer


def _cases() -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(4)
    cases = []
    for n_in, n_out, r, alpha in ((6, 5, 2, 4.0), (16, 8, 4, 16.0), (8, 12, 1, 1.0)):
        W0 = torch.randn(n_out, n_in, generator=generator)
        A, B = torch.randn(r, n_in, generator=generator), torch.randn(n_out, r, generator=generator)
        x = torch.randn(3, n_in, generator=generator)
        cases.append((x, W0, A, B, alpha))
    return cases


def check_llama7b_lora_params(answer: int) -> bool:
    """LoRA with r = 8 on Wq and Wv in all 32 layers of a model with hidden size 4096 (Llama-7B): how many
    trainable parameters?"""
    return report("llama7b_lora_params", answer == solution_llama7b_lora_params(),
                  "each adapted (4096 x 4096) matrix gets A (r, 4096) and B (4096, r); count the matrices")


def solution_llama7b_lora_params() -> int:
    hidden, r, layers, matrices_per_layer = 4096, 8, 32, 2  # Wq and Wv
    return layers * matrices_per_layer * r * (hidden + hidden)  # 4,194,304: 0.06% of 6.7B


def check_adapter_bytes(answer: int) -> bool:
    """How many bytes does that adapter take saved in float16 (2 bytes per parameter)?"""
    return report("adapter_bytes", answer == solution_adapter_bytes(), "parameters times bytes per parameter")


def solution_adapter_bytes() -> int:
    return solution_llama7b_lora_params() * 2  # 8,388,608 bytes = 8.4 MB, against 13.5 GB for the model


def check_lora_forward(fn: Callable) -> bool:
    """Write ``fn(x, W0, A, B, alpha)`` returning h = W0 x + (alpha / r) B A x for x of shape (batch, in)."""
    hint = "h = x @ W0.T + (alpha / r) * x @ A.T @ B.T, with r = A.shape[0]"
    return agrees("lora_forward", fn, lambda x, W0, A, B, alpha: _layer_with(W0, A, B, alpha)(x).detach(),
                  _cases(), hint)


def solution_lora_forward(x, W0, A, B, alpha):
    r = A.shape[0]
    return x @ W0.T + (alpha / r) * (x @ A.T) @ B.T  # (batch, in) -> (batch, r) -> (batch, out)


def check_merge(fn: Callable) -> bool:
    """Write ``fn(W0, A, B, alpha)`` returning the merged weight W0 + (alpha / r) B A, shape (out, in)."""
    hint = "W = W0 + (alpha / r) * B @ A, with r = A.shape[0]; B @ A has W0's shape (out, in)"
    cases = [(W0, A, B, alpha) for _, W0, A, B, alpha in _cases()]
    return agrees("merge", fn, lambda W0, A, B, alpha: _layer_with(W0, A, B, alpha).merged_linear().weight.detach(),
                  cases, hint)


def solution_merge(W0, A, B, alpha):
    r = A.shape[0]
    return W0 + (alpha / r) * B @ A  # (out, r) @ (r, in) -> (out, in)
