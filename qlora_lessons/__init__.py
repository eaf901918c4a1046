"""qlora_lessons: the tested library behind the qlora-lessons notebooks.

One module per concept, in lesson order; each is importable on its own. This file only re-exports.
"""

from qlora_lessons.blockwise import QuantError, quantization_error
from qlora_lessons.course import LESSONS, Lesson
from qlora_lessons.double_quant import (
    Blockwise8bitState,
    ConstantsMemory,
    bits_per_param,
    dequantize_absmax,
    dequantize_blockwise_8bit,
    dynamic_map,
    estimate_constants_memory,
    quantize_absmax,
    quantize_blockwise_8bit,
)
from qlora_lessons.env import course_mode, describe_environment, device, seed_everything, setup_lesson
from qlora_lessons.lora import (
    ALL_LINEAR,
    LoRALinear,
    TrainableCount,
    adapter_names,
    add_lora,
    count_lora_params,
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
from qlora_lessons.lora_plots import describe_lora_size, lora_calculator, plot_trainable_vs_rank
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
from qlora_lessons.lowrank_plots import plot_energy_by_layer, plot_low_rank, plot_spectrum, rank_slider, sample_image
from qlora_lessons.nf4 import (
    QuantState,
    dequantize_4bit,
    fp4_code,
    int4_code,
    nf4_code,
    pack_4bit,
    quantize_4bit,
    unpack_4bit,
)
from qlora_lessons.nf4_bitsandbytes import from_bitsandbytes, to_bitsandbytes, to_linear4bit
from qlora_lessons.paging import (
    MemoryEvent,
    MemoryTimeline,
    OptimizerStateBytes,
    PagedAdamW,
    PagingTraffic,
    count_saved_activations,
    optimizer_state_bytes,
    plot_memory_timeline,
    record_memory_timeline,
)

__version__ = "0.1.0"

__all__ = [
    # course and environment (lesson 00)
    "LESSONS", "Lesson", "course_mode", "describe_environment", "device", "seed_everything", "setup_lesson",
    # low rank (lesson 03)
    "LowRankSummary", "count_low_rank_params", "effective_rank", "low_rank_approx", "low_rank_factors",
    "random_matrix_like", "singular_value_energy", "summarize_low_rank", "plot_low_rank", "plot_spectrum",
    "rank_slider", "sample_image",
    # LoRA (lesson 04)
    "ALL_LINEAR", "LoRALinear", "TrainableCount", "adapter_names", "add_lora", "count_trainable", "disable_adapter",
    "linear_layer_names", "lora_layers", "merge_and_unload", "merge_lora", "set_adapter", "unmerge_lora",
    "load_peft_adapter", "save_as_peft",
    # NF4 and double quantization (lessons 05-06)
    "QuantError", "quantization_error", "QuantState", "dequantize_4bit", "fp4_code", "int4_code", "nf4_code",
    "pack_4bit", "quantize_4bit", "unpack_4bit", "from_bitsandbytes", "to_bitsandbytes", "to_linear4bit",
    "Blockwise8bitState", "ConstantsMemory", "bits_per_param", "dequantize_absmax", "dequantize_blockwise_8bit",
    "dynamic_map", "estimate_constants_memory", "quantize_absmax", "quantize_blockwise_8bit",
    # paged optimizers (lesson 07)
    "MemoryEvent", "MemoryTimeline", "OptimizerStateBytes", "PagedAdamW", "PagingTraffic", "count_saved_activations",
    "optimizer_state_bytes", "plot_memory_timeline", "record_memory_timeline",
    # lessons 03-04 notebooks: energy by layer type, LoRA's size
    "plot_energy_by_layer", "count_lora_params", "describe_lora_size", "lora_calculator", "plot_trainable_vs_rank",
]
