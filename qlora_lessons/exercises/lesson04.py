"""Exercises for 04_lora_from_scratch: trainable parameters of a 7B model, adapter bytes, the forward, merging;
and three that ask for a prediction, then an experiment: the smallest rank that reaches 85%, the learning
rate that makes up for a halved alpha, and what a random B does to the model at step 0.

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qlora_lessons.exercises import agrees, is_number, report
from qlora_lessons.lora import LoRALinear


def _layer_with(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> LoRALinear:
    """The library's layer holding the given W0 (out, in), A (r, in), B (out, r); no bias."""
    layer = LoRALinear(nn.Linear(W0.shape[1], W0.shape[0], bias=False), r=A.shape[0], lora_alpha=alpha)
    with torch.no_grad():
        layer.base_layer.weight.copy_(W0), layer.lora_A.copy_(A), layer.lora_B.copy_(B)
    return layer


def _cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]]:
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
                  "each adapted (4096 x 4096) matrix gets A (r, 4096) and B (4096, r); count the matrices",
                  answer=answer)


def solution_llama7b_lora_params() -> int:
    hidden, r, layers, matrices_per_layer = 4096, 8, 32, 2  # Wq and Wv
    return layers * matrices_per_layer * r * (hidden + hidden)  # 4,194,304: 0.06% of 6.7B


def check_adapter_bytes(answer: int) -> bool:
    """How many bytes does that adapter take saved in float16 (2 bytes per parameter)?"""
    return report("adapter_bytes", answer == solution_adapter_bytes(), "parameters times bytes per parameter",
                  answer=answer)


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


def check_smallest_rank(answer: int) -> bool:
    """Predict first, then read the rank sweep (``lora_sweeps.load_sweeps``) or run the points yourself: the
    smallest r (all linear layers, alpha = 2r) whose mean held-out exact match over 3 seeds reaches 85%."""
    return report("smallest_rank", answer == solution_smallest_rank(),
                  "average the 3 seeds at each r in select(load_sweeps(), 'rank') and take the first r at >= 85%",
                  answer=answer)


def solution_smallest_rank() -> int:
    from qlora_lessons.lora_sweeps import load_sweeps, select, summarize

    points = select(load_sweeps(), "rank")
    return min(r for r in {p.r for p in points} if summarize([p for p in points if p.r == r]).mean >= 0.85)


def check_alpha_compensation(answer: str) -> bool:
    """You halve alpha. With Adam (no gradient clipping, no weight decay), which change of learning rate gives
    exactly the same training run: 'both' (double the learning rate of A and B), 'A' (double A's only) or 'B'
    (double B's only)? Predict, then try each with ``toy_run`` of the lesson."""
    hint = "dW = (alpha / r) B A and B starts at 0: Adam's step size does not depend on the gradient's scale"
    return report("alpha_compensation", answer == solution_alpha_compensation(), hint, answer=answer)


def solution_alpha_compensation() -> str:
    # Adam moves each parameter by about lr whatever its gradient's scale, so (alpha / r) B moves by
    # (alpha / r) lr_B per step; A's gradient is ((alpha / r) B)^T dL/dh, the same in both runs. Only lr_B matters.
    return "B"


def check_random_b_init(zero_b_change: float, random_b_change: float) -> bool:
    """Predict first: with B random instead of zero, is the model at step 0 still the pretrained model? Then
    measure the largest |logit difference| from the base model on one batch, for B = 0 and for B random."""
    numbers = is_number(zero_b_change) and is_number(random_b_change)
    ok = numbers and zero_b_change == 0 and random_b_change > 1e-3
    return report("random_b_init", ok, "B = 0 gives exactly the base model's logits (difference 0); a random B "
                  "changes every adapted layer from the first step: pass the two measured differences",
                  answer=zero_b_change)


def solution_random_b_init(std: float = 0.05) -> tuple[float, float]:
    from qlora_lessons.data import load_task
    from qlora_lessons.lora import add_lora
    from qlora_lessons.models import load_model
    from qlora_lessons.train import collate, encode_examples

    model, tokenizer = load_model("course-model")
    batch = collate(encode_examples(tokenizer, load_task("train")[:32]), tokenizer.pad_token_id)
    with torch.no_grad():
        base = model(**batch).logits
        add_lora(model, "all-linear", r=4, lora_alpha=8)  # B = 0
        zero_b = float((model(**batch).logits - base).abs().max())
        generator = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * std)  # B random, as A is
        random_b = float((model(**batch).logits - base).abs().max())
    return zero_b, random_b  # 0.0 and several logits' worth: training would start from a changed model
