"""The QLoRA recipe as the paper ran it, next to a run's own settings; and what a bare 4-bit config gives.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs": section 3 (NF4, double
quantization, paged optimizers, equations 5-6), section 4 (LoRA on all linear layers), section 5 and
appendix B (the Guanaco runs), and the reference scripts ``scripts/finetune_guanaco_{7,13,33,65}b.sh`` of
github.com/artidoro/qlora (``qlora.py``: ``optim='paged_adamw_32bit'``, LoRA modules cast to bfloat16).

- ``PAPER_RECIPE``: every setting, for 7B/13B and for 33B/65B, with where it comes from.
- ``recipe_table(course, why)``: the paper's settings beside a run's own, and why they differ.
- ``describe_4bit_config(config)``: the four fields of a ``BitsAndBytesConfig`` that QLoRA sets. With
  ``load_in_4bit=True`` alone they are FP4, no double quantization and float32 compute, not QLoRA's.

Left out: the data sets, sequence lengths and step counts of each Guanaco run (appendix B, Table 9).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# setting -> (7B and 13B, 33B and 65B, source). Values as the reference scripts pass them.
PAPER_RECIPE: dict[str, tuple[object, object, str]] = {
    "quantization": ("nf4", "nf4", "section 3, equation 4 (NormalFloat)"),
    "double_quant": (True, True, "section 3 (Double Quantization)"),
    "compute_dtype": ("bfloat16", "bfloat16", "section 3, equations 5-6"),
    "target_modules": ("all-linear", "all-linear", "section 4, Figure 2"),
    "r": (64, 64, "appendix B; --lora_r 64"),
    "lora_alpha": (16, 16, "appendix B; --lora_alpha 16"),
    "lora_dropout": (0.1, 0.05, "appendix B; --lora_dropout"),
    "adapter_dtype": ("bfloat16", "bfloat16", "equation 5 (L1, L2 in BF16); qlora.py"),
    "optimizer": ("paged_adamw_32bit", "paged_adamw_32bit", "section 3 (Paged Optimizers); qlora.py"),
    "lr": (2e-4, 1e-4, "section 5; --learning_rate"),
    "schedule": ("constant", "constant", "--lr_scheduler_type constant, --warmup_ratio 0.03"),
    "max_grad_norm": (0.3, 0.3, "--max_grad_norm 0.3"),
    "batch_size": (16, 16, "--per_device_train_batch_size 4 x --gradient_accumulation_steps 4"),
    "gradient_checkpointing": (True, True, "section 3 (Paged Optimizers); --gradient_checkpointing"),
}


def recipe_table(course: Mapping[str, object], why: Mapping[str, str] | None = None) -> str:
    """A text table: each setting of ``PAPER_RECIPE``, the paper's values, the course's, and why they differ.

    ``course`` maps settings to this run's values (settings it leaves out show "-"); ``why`` maps a
    setting to a short reason, shown where the values differ.
    Shapes: two mappings in, one string out (one line per setting, plus a header).
    Example: ``recipe_table({"r": 2}, {"r": "a 256-wide model"})`` -> a line "r  64  64  2  a 256-wide model".
    """
    if not isinstance(course, Mapping):
        raise TypeError(f"course must be a mapping of setting -> value, got {type(course).__name__}")
    unknown = sorted(set(course) - set(PAPER_RECIPE))
    if unknown:
        raise ValueError(f"course has settings the recipe does not know: {unknown}; known: {list(PAPER_RECIPE)}")
    why = dict(why or {})
    rows = [("setting", "7B/13B", "33B/65B", "course", "why the course differs")]
    for name, (small, large, _) in PAPER_RECIPE.items():
        ours = course.get(name, "-")
        same = ours == small or (isinstance(ours, float) and isinstance(small, float) and abs(ours - small) < 1e-12)
        rows.append((name, str(small), str(large), str(ours), "" if same or ours == "-" else why.get(name, "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
                     for row in rows).rstrip()


def describe_4bit_config(config) -> dict[str, object]:
    """The fields of a transformers ``BitsAndBytesConfig`` that decide the QLoRA setting, as a dict.

    Returns load_in_4bit, quant_type (``bnb_4bit_quant_type``), double_quant (``bnb_4bit_use_double_quant``)
    and compute_dtype (``bnb_4bit_compute_dtype``, a torch.dtype).
    Example: ``describe_4bit_config(BitsAndBytesConfig(load_in_4bit=True))`` -> {'load_in_4bit': True,
    'quant_type': 'fp4', 'double_quant': False, 'compute_dtype': torch.float32} (transformers' defaults).
    """
    needed = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
    missing = [name for name in needed if not hasattr(config, name)]
    if missing:
        raise TypeError(f"config must be a transformers BitsAndBytesConfig, got {type(config).__name__} "
                        f"without {missing}")
    compute = config.bnb_4bit_compute_dtype
    return {"load_in_4bit": bool(config.load_in_4bit), "quant_type": config.bnb_4bit_quant_type,
            "double_quant": bool(config.bnb_4bit_use_double_quant),
            "compute_dtype": compute if isinstance(compute, torch.dtype) else getattr(torch, str(compute))}
