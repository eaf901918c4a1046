"""Exercises of lesson 00 (start here): bytes of a number, of the course model, of a 7B fine-tune.

The last two are "predict, then run": write down a prediction, run the experiment, and pass both to
the check; it grades the measured number and says how far the prediction was.
"""

from __future__ import annotations

import torch

from qlora_lessons.exercises import close_to, is_number, report


def graded(name: str, measured: object, expected: float, prediction: object, hint: str, *,
           rel_tol: float = 0.0) -> bool:
    """Grade ``measured`` against ``expected`` (within ``rel_tol``); if a number, say how far ``prediction`` was.

    Example: ``graded("bytes", 8, 8, 4, "...")`` prints ``✓ bytes: correct`` and
    ``your prediction 4 was 50% below the measured 8``, and returns True.
    """
    ok = report(name, close_to(measured, expected, rel_tol=rel_tol), hint, answer=measured)
    if ok and is_number(prediction):
        gap = (prediction - expected) / expected if expected else float(prediction != expected)
        print(f"  your prediction {prediction:,} was " + ("exactly right" if gap == 0 else
              f"{abs(gap):.0%} {'above' if gap > 0 else 'below'} the measured {expected:,}"))
    return ok


def solution_float32_bytes() -> int:
    """Bytes of one float32 number: 32 bits / 8 bits per byte, as torch stores it."""
    return torch.zeros((), dtype=torch.float32).element_size()


def check_float32_bytes(answer: int) -> bool:
    """Your number of bytes in one float32."""
    return report("bytes of one float32", is_number(answer) and answer == solution_float32_bytes(),
                  "32 bits, 8 bits per byte", answer=answer)


def solution_course_model_bytes() -> int:
    """Bytes of the course model's weights as loaded (float32): 4 bytes times the parameter count."""
    from qlora_lessons.models import load_model

    model, _ = load_model("course-model")
    return sum(p.nbytes for p in model.parameters())


def check_course_model_bytes(measured: int, prediction: object = None) -> bool:
    """The course model's weights in bytes (measured), and your prediction made before measuring."""
    return graded("course model bytes", measured, solution_course_model_bytes(), prediction,
                  "load_model('course-model'), then add up p.nbytes over model.parameters()")


def solution_full_finetune_bytes() -> float:
    """Peak bytes of fully fine-tuning a 7e9-parameter model in pure bfloat16 with AdamW, from the count alone:
    weights 2 + gradients 2 + Adam's two moments 4 = 8 bytes per parameter (activations need the shapes)."""
    import torch

    from qlora_lessons.memory_estimate import estimate_training_memory

    return estimate_training_memory(7_000_000_000, weight_dtype=torch.bfloat16).total


def check_full_finetune_bytes(measured: float, prediction: object = None) -> bool:
    """The estimator's bytes for a 7e9-parameter bfloat16 full fine-tune, and your prediction made before asking it."""
    return graded("7B bfloat16 full fine-tuning bytes", measured, solution_full_finetune_bytes(), prediction,
                  "estimate_training_memory(7_000_000_000, weight_dtype=torch.bfloat16).total",
                  rel_tol=1e-6)
