"""Exercises for 08_qlora_end_to_end: adapter sizes, 4-bit bytes, the QLoRA forward, where a merge should go.

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qlora_lessons.exercises import close_to, is_number, report
from qlora_lessons.memory import count_lora_parameters, model_config
from qlora_lessons.nf4 import dequantize_4bit
from qlora_lessons.qlora import QLoRALinear


def check_trainable_7b(answer: int) -> bool:
    """Trainable parameters of LoRA r=16 on all seven linear layers of each of LLaMA-7B's 32 decoder layers?"""
    hint = "per layer: sum of r * (in + out) over q, k, v, o (4096 x 4096) and gate, up (11008 x 4096), down"
    return report("trainable_7b", is_number(answer) and answer == solution_trainable_7b(), hint)


def solution_trainable_7b() -> int:
    h, i, layers, r = 4096, 11008, 32, 16
    per_layer = 4 * r * (h + h) + 3 * r * (h + i)  # A (r, in) + B (out, r) for each matrix
    return layers * per_layer  # 39,976,960: 0.59% of 6.7B


def check_weight_bytes_4096(answer: float) -> bool:
    """Bytes of one 4096 x 4096 weight stored in NF4 with double quantization (blocksize 64, constants in blocks
    of 256): the codes and the constants (leave out the two small code tables)."""
    ok = close_to(answer, solution_weight_bytes_4096(), rel_tol=1e-4)
    hint = "half a byte per weight, one byte per block of 64, one float32 per 256 blocks"
    return report("weight_bytes_4096", ok, hint)


def solution_weight_bytes_4096() -> float:
    n = 4096 * 4096
    blocks = n // 64
    return n / 2 + blocks + 4 * blocks / 256  # 8,388,608 + 262,144 + 4,096 = 8,654,848 bytes (4.127 bits)


def check_adapter_megabytes(answer: float) -> bool:
    """Megabytes (10^6 bytes) of the file that saves the adapter of exercise 1 in bfloat16 (leave out the header)."""
    ok = close_to(answer, solution_adapter_megabytes(), abs_tol=0.05)
    return report("adapter_megabytes", ok, "trainable parameters times 2 bytes; the 4-bit base is not in the file")


def solution_adapter_megabytes() -> float:
    trainable = count_lora_parameters(model_config("llama-7b"), 16, "all-linear")  # exercise 1
    return trainable * 2 / 1e6  # bfloat16: 80 MB next to a 3.9 GB 4-bit base


def check_qlora_forward(fn: Callable) -> bool:
    """Write ``fn(x, packed, state, lora_A, lora_B, scaling)``: the output of a QLoRA layer without bias, in float32."""
    if not callable(fn):
        return report("qlora_forward", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    generator = torch.Generator().manual_seed(8)
    for in_features, out_features, r in ((64, 32, 4), (128, 96, 2)):
        layer = QLoRALinear.from_linear(nn.Linear(in_features, out_features, bias=False), r=r, alpha=2 * r,
                                        compute_dtype=torch.float32)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(out_features, r, generator=generator))
        x = torch.randn(5, in_features, generator=generator)
        try:
            got = fn(x, layer.weight_4bit, layer.quant_state, layer.lora_A.detach(), layer.lora_B.detach(),
                     layer.scaling)
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report("qlora_forward", False, f"your function raised {type(error).__name__}: {error}")
        expected = layer(x).detach()
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
                got.float(), expected, rtol=1e-5, atol=1e-5):
            return report("qlora_forward", False,
                          "x @ dequantize_4bit(packed, state).T + scaling * (x @ lora_A.T) @ lora_B.T")
    return report("qlora_forward", True)


def solution_qlora_forward(x, packed, state, lora_A, lora_B, scaling):
    w0 = dequantize_4bit(packed, state)  # (out, in), rebuilt from the 4-bit codes
    return x @ w0.T + scaling * (x @ lora_A.T) @ lora_B.T  # (N, out)


def check_merge_target(answer: str) -> bool:
    """To deploy without the adapter's extra matmuls, merge dW = (alpha / r) B A into which weights, so that the
    merged model computes what the QLoRA model computed: 'original' (the 16-bit checkpoint) or 'dequantized'
    (the 4-bit weights, dequantized to 16 bits)?"""
    ok = isinstance(answer, str) and answer.strip().lower() == solution_merge_target()
    return report("merge_target", ok, "the adapter was trained on top of the 4-bit weights, not the original ones")


def solution_merge_target() -> str:
    return "dequantized"  # W4 + dW is what was trained; W16 + dW adds the quantization error W16 - W4 back
