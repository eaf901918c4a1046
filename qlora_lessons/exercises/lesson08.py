"""Exercises for 08_qlora_end_to_end: adapter sizes, 4-bit bytes, the QLoRA forward, where a merge should go,
and two experiments: QLoRA on an FP4 base, and what a merge into 4 bits keeps of dW.

Each ``check_<name>(answer)`` prints a tick or a cross and returns True or False;
``show_solution(solution_<name>)`` prints a worked solution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qlora_lessons.exercises import attempt, close_to, is_number, report, report_error
from qlora_lessons.memory import count_lora_parameters, model_config
from qlora_lessons.nf4 import dequantize_4bit
from qlora_lessons.qlora import QLoRALinear
from qlora_lessons.qlora_merge import merge_retention


def check_trainable_7b(answer: int) -> bool:
    """Trainable parameters of LoRA r=16 on all seven linear layers of each of LLaMA-7B's 32 decoder layers?"""
    hint = "per layer: sum of r * (in + out) over q, k, v, o (4096 x 4096) and gate, up (11008 x 4096), down"
    return report("trainable_7b", is_number(answer) and answer == solution_trainable_7b(), hint, answer=answer)


def solution_trainable_7b() -> int:
    h, i, layers, r = 4096, 11008, 32, 16
    per_layer = 4 * r * (h + h) + 3 * r * (h + i)  # A (r, in) + B (out, r) for each matrix
    return layers * per_layer  # 39,976,960: 0.59% of 6.7B


def check_weight_bytes_4096(answer: float) -> bool:
    """Bytes of one 4096 x 4096 weight stored in NF4 with double quantization (blocksize 64, constants in blocks
    of 256): the codes and the constants (leave out the two small code tables)."""
    ok = close_to(answer, solution_weight_bytes_4096(), rel_tol=1e-4)
    hint = "half a byte per weight, one byte per block of 64, one float32 per 256 blocks"
    return report("weight_bytes_4096", ok, hint, answer=answer)


def solution_weight_bytes_4096() -> float:
    n = 4096 * 4096
    blocks = n // 64
    return n / 2 + blocks + 4 * blocks / 256  # 8,388,608 + 262,144 + 4,096 = 8,654,848 bytes (4.127 bits)


def check_adapter_megabytes(answer: float) -> bool:
    """Megabytes (10^6 bytes) of the file that saves the adapter of exercise 1 in bfloat16 (leave out the header)."""
    ok = close_to(answer, solution_adapter_megabytes(), abs_tol=0.05)
    return report("adapter_megabytes", ok, "trainable parameters times 2 bytes; the 4-bit base is not in the file",
                  answer=answer)


def solution_adapter_megabytes() -> float:
    trainable = count_lora_parameters(model_config("llama-7b"), 16, "all-linear")  # exercise 1
    return trainable * 2 / 1e6  # bfloat16: 80 MB next to a 3.9 GB 4-bit base


def check_qlora_forward(fn: Callable) -> bool:
    """Write ``fn(x, packed, state, lora_A, lora_B, scaling)``: the output of a QLoRA layer without bias, in float32."""
    if not callable(fn):
        return report("qlora_forward", False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    generator = torch.Generator().manual_seed(8)
    for in_features, out_features, r in ((64, 32, 4), (128, 96, 2)):
        layer = QLoRALinear.from_linear(nn.Linear(in_features, out_features, bias=False), r=r, lora_alpha=2 * r,
                                        compute_dtype=torch.float32)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(out_features, r, generator=generator))
        x = torch.randn(5, in_features, generator=generator)
        try:
            got = attempt(fn, x, layer.weight_4bit, layer.quant_state, layer.lora_A.detach(), layer.lora_B.detach(),
                     layer.scaling)
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error("qlora_forward", error)
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
    return report("merge_target", ok, "the adapter was trained on top of the 4-bit weights, not the original ones",
                  answer=answer)


def solution_merge_target() -> str:
    return "dequantized"  # W4 + dW is what was trained; W16 + dW adds the quantization error W16 - W4 back


def check_fp4_experiment(prediction: bool, fp4_score: float, nf4_score: float) -> bool:
    """Predict, then measure: does QLoRA on an FP4 base score within 5 points of the NF4 run (``nf4_score``)?

    ``prediction``: True (within 5 points) or False, written down before the run; ``fp4_score``: the held-out
    exact match you measured with ``quantization="fp4"`` (a fraction). The check says whether your prediction
    matched your measurement. The paper (section 4, Figure 3 and Table 2) finds NF4 better than FP4 on
    LLaMA models; a 2.8M-parameter model on a small task may or may not show it.
    """
    if not isinstance(prediction, bool):
        return report("fp4_experiment", False, "first write your prediction: True (within 5 points) or False",
                      answer=prediction)
    if not (is_number(fp4_score) and 0.0 <= fp4_score <= 1.0) or not (is_number(nf4_score) and 0 <= nf4_score <= 1):
        return report("fp4_experiment", False, "then measure fp4_score, a fraction from 0 to 1: repeat sections "
                      "3-6 with quantization='fp4', or run lesson08.solution_qlora_score('fp4', ...)",
                      answer=prediction)
    within = abs(fp4_score - nf4_score) <= 0.05
    print(f"measured: FP4 {fp4_score:.1%} vs NF4 {nf4_score:.1%} ({'within' if within else 'more than'} 5 points)")
    return report("fp4_experiment", prediction == within,
                  "your prediction and your measurement disagree: what does FP4's code waste? (lesson 05)",
                  answer=prediction)


def solution_qlora_score(quantization: str, train: list, test: list, *, model_id: str = "course-model", r: int = 2,
                         alpha: float = 4, lr: float = 3e-3, steps: int = 150,
                         compute_dtype: torch.dtype = torch.float32) -> float:
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from qlora_lessons.evaluate import exact_match
    from qlora_lessons.models import load_model
    from qlora_lessons.train import finetune

    model, tokenizer = load_model(model_id, quantization=quantization, double_quant=True,
                                  compute_dtype=compute_dtype, dtype=torch.float32)  # sections 3-4
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.PagedAdamW32bit(trainable, lr=lr, weight_decay=0.0)  # section 5
    finetune(model, tokenizer, train, steps=steps, lr=lr, optimizer=optimizer, desc=quantization)  # section 6
    return exact_match(model, tokenizer, test)


def check_merge_kept(answer: float, weights: list, deltas: list, scale: float = 32) -> bool:
    """Predict, then measure: what share of dW does a merge into 4 bits keep when dW is ``scale`` times larger?

    ``weights`` and ``deltas`` are lesson 08's W4 and dW; the answer is a fraction (0 to 1), within 0.05 of
    ``merge_retention(weights, [scale * d for d in deltas]).kept``.
    """
    if not is_number(answer):
        return report("merge_kept", False, "a fraction from 0 to 1: predict it, then measure it with "
                      f"merge_retention(W4, [{scale:g} * d for d in dW]).kept", answer=answer)
    ok = close_to(answer, solution_merge_kept(weights, deltas, scale), abs_tol=0.05)
    return report("merge_kept", ok, f"measure it: merge_retention(W4, [{scale:g} * d for d in dW]).kept", answer=answer)


def solution_merge_kept(weights: list, deltas: list, scale: float = 32) -> float:
    return merge_retention(weights, [scale * d for d in deltas]).kept  # quantize W4 + k dW again, project on dW
