"""qlora_lessons: the tested library behind the qlora-lessons notebooks.

One module per concept, in lesson order; each is importable on its own. This file only re-exports.
"""

from qlora_lessons.course import LESSONS, Lesson
from qlora_lessons.env import course_mode, describe_environment, device, seed_everything, setup_lesson
from qlora_lessons.lora import (
    ALL_LINEAR,
    LoRALinear,
    TrainableCount,
    adapter_names,
    add_lora,
    count_trainable,
    disable_adapter,
    linear_layer_names,
    lora_layers,
    merge_and_unload,
    merge_lora,
    set_adapter,
    unmerge_lora,
)
from qlora_lessons.lora_peft import load_peft_adapter, save_as_peft
from qlora_lessons.lowrank import (
    LowRankSummary,
    count_low_rank_params,
    effective_rank,
    low_rank_approx,
    low_rank_factors,
    random_matrix_like,
    singular_value_energy,
    summarize_low_rank,
)
from qlora_lessons.lowrank_plots import plot_low_rank, plot_spectrum, rank_slider, sample_image

__version__ = "0.1.0"

__all__ = [
    "ALL_LINEAR",
    "LESSONS",
    "Lesson",
    "LoRALinear",
    "LowRankSummary",
    "TrainableCount",
    "adapter_names",
    "add_lora",
    "count_low_rank_params",
    "count_trainable",
    "course_mode",
    "describe_environment",
    "device",
    "disable_adapter",
    "effective_rank",
    "linear_layer_names",
    "load_peft_adapter",
    "lora_layers",
    "low_rank_approx",
    "low_rank_factors",
    "merge_and_unload",
    "merge_lora",
    "plot_low_rank",
    "plot_spectrum",
    "random_matrix_like",
    "rank_slider",
    "sample_image",
    "save_as_peft",
    "seed_everything",
    "set_adapter",
    "setup_lesson",
    "singular_value_energy",
    "summarize_low_rank",
    "unmerge_lora",
]
