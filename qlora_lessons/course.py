"""The table of contents of the course: one entry per notebook, in the order a learner takes them.

The start-here notebook and the README draw their lesson tables from here, and a test checks that
every entry has its notebook and every notebook has its entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    """One notebook: its file name in ``notebooks/``, its title and what a learner takes away."""

    notebook: str
    title: str
    you_learn: str


LESSONS: tuple[Lesson, ...] = (
    Lesson("00_start_here.ipynb", "Start here", "how the course works, your mode (CPU or GPU), your environment"),
    Lesson("01_why_finetune.ipynb", "Why fine-tune",
           "a pretrained model knows facts but not the task; fine-tuning teaches the task with little data"),
    Lesson("02_memory_maths.ipynb", "Memory maths",
           "bytes for weights, gradients, optimizer states and activations; 13B and 65B checked by tracing"),
    Lesson("03_low_rank_svd.ipynb", "Low rank and SVD",
           "rank, SVD, best rank-r approximation; a real fine-tuning update is low-rank"),
    Lesson("04_lora_from_scratch.ipynb", "LoRA from scratch",
           "h = W0 x + (alpha/r) B A x by hand; rank, alpha, targets; merging; the same adapter in peft"),
    Lesson("05_nf4_by_hand.ipynb", "NF4 by hand",
           "absmax, FP4, quantile quantization, the NF4 code; blockwise 4-bit, bit-exact with bitsandbytes"),
    Lesson("06_double_quantization.ipynb", "Double quantization",
           "quantizing the quantization constants: 0.5 -> 0.127 bits per parameter"),
    Lesson("07_paged_optimizers.ipynb", "Paged optimizers",
           "where memory spikes come from; paged optimizers: state on the GPU, evicted to CPU RAM only under "
           "pressure; what paging frees in QLoRA; 8-bit optimizer state as an add-on"),
    Lesson("08_qlora_end_to_end.ipynb", "QLoRA end to end",
           "4-bit base + LoRA + paged 8-bit AdamW with transformers, peft and bitsandbytes; full vs LoRA vs QLoRA"),
    Lesson("09_appendix_bitsandbytes_on_cpu.ipynb", "Appendix: matching bitsandbytes on the CPU",
           "where bitsandbytes' CPU code differs from the exact computation (a 4-bit quirk, an 8-bit lookup table)"),
)
