"""Exercises for 02_memory_maths: bytes of a full fine-tune, LoRA parameter counts, 4-bit bits, what fits a card.

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qlora_lessons.exercises import attempt, close_to, report, report_error
from qlora_lessons.memory import count_lora_parameters, model_config
from qlora_lessons.memory_estimate import estimate_training_memory


def check_full_finetune_bytes(answer: float) -> bool:
    """Weights + gradients + AdamW states, in bytes, to fine-tune a 7,000,000,000-parameter model in float32."""
    ok = close_to(answer, solution_full_finetune_bytes(), rel_tol=1e-9)
    return report("full_finetune_bytes", ok, "4 bytes of weight, 4 of gradient and 2 x 4 of AdamW state per parameter",
                  answer=answer)


def solution_full_finetune_bytes() -> float:
    n = 7_000_000_000
    weights, gradients, adam = 4 * n, 4 * n, 2 * 4 * n  # float32: 4 bytes; AdamW keeps m and v
    return weights + gradients + adam  # 16 bytes per parameter: 112e9 bytes


def check_lora_parameters(fn: Callable) -> bool:
    """Write ``fn(config, r, targets)``: the trainable parameters of rank-r LoRA on ``targets`` in every layer."""
    if not callable(fn):
        return report("lora_parameters", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    cases = [(model_config(name), r, targets) for name in ("llama-7b", "llama-2-70b")
             for r, targets in ((8, ("q_proj", "v_proj")), (64, ("k_proj", "down_proj")))]
    hint = ("A is (r, in) and B is (out, r) for each targeted W (out, in); k_proj and v_proj are narrower "
            "in llama-2-70b (grouped-query attention: 8 key/value heads)")
    for config, r, targets in cases:
        try:
            got = attempt(fn, config, r, targets)
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("lora_parameters", error)
        if got != count_lora_parameters(config, r, targets):
            return report("lora_parameters", False, hint)
    return report("lora_parameters", True)


def solution_lora_parameters(config, r: int, targets) -> int:
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)  # width of k_proj and v_proj
    shapes = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
              "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}  # (out, in)
    per_layer = sum(r * (shapes[name][0] + shapes[name][1]) for name in targets)  # B (out, r) + A (r, in)
    return config.num_hidden_layers * per_layer


def check_double_quant_bits(answer: float) -> bool:
    """Bits per parameter of NF4 with double quantization (blocksize 64, second-level blocks of 256)."""
    ok = close_to(answer, solution_double_quant_bits(), abs_tol=1e-6)  # computed, not the rounded 4.127 of the lesson
    hint = ("4 bits of code + an 8-bit absmax per 64 values + a 32-bit absmax per 64 * 256 values "
            "(compute it, unrounded)")
    return report("double_quant_bits", ok, hint, answer=answer)


def solution_double_quant_bits() -> float:
    return 4 + 8 / 64 + 32 / (64 * 256)  # 4.127 bits: 0.127 bits of constants instead of 32 / 64 = 0.5


GIB = 2**30  # a card sold as "16 GB" holds 16 GiB = 16 * 2**30 bytes


def check_largest_batch(answer: int) -> bool:
    """Predict, then run: the largest batch of 2048-token sequences for which llama-7b QLoRA fits a 16 GiB card.

    Setting: bfloat16, LoRA rank 16 on all linear layers, AdamW, gradient checkpointing; the card holds
    16 * 2**30 bytes for the step (the CUDA context left out).
    """
    ok = answer == solution_largest_batch()
    return report("largest_batch", ok, "raise batch_size one at a time until the estimated peak passes 16 * 2**30 "
                                       "bytes (GiB, not 1e9-byte GB)", answer=answer)


def solution_largest_batch() -> int:
    def peak(batch_size: int) -> float:
        return estimate_training_memory("llama-7b", method="qlora", weight_dtype=torch.bfloat16, r=16,
                                        target_modules="all-linear", batch_size=batch_size, seq_len=2048,
                                        gradient_checkpointing=True).total

    batch_size = 1
    while peak(batch_size + 1) <= 16 * GIB:
        batch_size += 1
    return batch_size  # the float32 logits (3 x tokens x 32,000 x 4 bytes) grow fastest


def check_33b_batch(answer: int) -> bool:
    """Predict, then run: the largest batch of 1024-token sequences for which llama-33b QLoRA fits a 24 GiB card.

    Setting: the QLoRA reference recipe: NF4 with double quantization, bfloat16 compute and adapters,
    LoRA rank 64 on all linear layers, 32-bit AdamW (paged_adamw_32bit, state counted as resident),
    gradient checkpointing; the card holds 24 * 2**30 bytes for the step (the CUDA context left out).
    """
    ok = answer == solution_33b_batch()
    return report("33b_batch", ok, "raise batch_size one at a time until the estimated peak passes 24 * 2**30 bytes",
                  answer=answer)


def solution_33b_batch() -> int:
    def peak(batch_size: int) -> float:
        return estimate_training_memory("llama-33b", method="qlora", weight_dtype=torch.bfloat16, r=64,
                                        target_modules="all-linear", optimizer="adamw32bit", batch_size=batch_size,
                                        seq_len=1024, gradient_checkpointing=True).total

    batch_size = 0
    while peak(batch_size + 1) <= 24 * GIB:
        batch_size += 1
    return batch_size  # 0 would mean: not even one sequence fits


def check_bfloat16_step(answer: float) -> bool:
    """Predict, then run: the smallest power of two u = 2**-k for which bfloat16(1.0) + u is not 1.0."""
    ok = close_to(answer, solution_bfloat16_step(), rel_tol=1e-6)
    return report("bfloat16_step", ok, "try torch.tensor(1.0, dtype=torch.bfloat16) + 2.0 ** -k for k = 1, 2, ... "
                                       "and keep the smallest u that changes the sum", answer=answer)


def solution_bfloat16_step() -> float:
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    k = 1
    while (one + torch.tensor(2.0 ** -(k + 1), dtype=torch.bfloat16)).item() != 1.0:
        k += 1
    return 2.0 ** -k  # 2**-7: bfloat16 keeps 7 bits after the leading 1 (float16 10, float32 23)
