"""qlora_lessons: the tested library behind the qlora-lessons notebooks.

One module per concept, in lesson order; each is importable on its own. This file only re-exports,
lazily: ``import qlora_lessons`` imports none of the modules (nor torch, transformers or matplotlib);
the first use of a name imports the module that defines it (PEP 562 module ``__getattr__``), so the
command line (``qlora-lessons``) starts in a fraction of a second.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # True for type checkers (mypy, pyright); not importing typing keeps the import fast

_MODULES = {  # module (under qlora_lessons) -> the public names it defines
    "adam8bit": ("AdamW8bit",),
    "adamw": ("adamw_update_", "check_adamw_hyperparameters"),
    "blockwise": ("QuantError", "dequantize_int", "quantization_error", "quantize_int"),
    "course": ("LESSONS", "Lesson"),
    "data": ("Example", "load_task"),
    "double_quant": ("Blockwise8bitState", "ConstantsMemory", "bits_per_param", "dequantize_absmax",
        "dequantize_blockwise_8bit", "dynamic_map", "estimate_constants_memory", "quantize_absmax",
        "quantize_blockwise_8bit"),
    "env": ("ComputeDtypeChoice", "bfloat16_matmul_ratio", "compute_choice", "compute_dtype", "course_mode",
        "describe_environment", "device", "lesson_seed", "seed_everything", "setup_lesson", "torch_threads"),
    "evaluate": ("exact_match", "generate_answers"),
    "lora": ("ALL_LINEAR", "LoRALinear", "TrainableCount", "adapter_names", "add_lora", "count_lora_params",
        "count_trainable", "disable_adapter", "linear_layer_names", "lora_layers", "merge_and_unload", "merge_lora",
        "set_adapter", "unmerge_lora"),
    "lora_coverage": ("LeftOutWarning", "matrices_outside_linear_layers"),
    "lora_peft": ("load_peft_adapter", "save_as_peft"),
    "lora_plots": ("describe_lora_size", "lora_calculator", "plot_trainable_vs_rank"),
    "lowrank": ("LowRankSummary", "count_low_rank_params", "effective_rank", "low_rank_approx", "low_rank_factors",
        "random_matrix_like", "singular_value_energy", "summarize_low_rank"),
    "lowrank_plots": ("plot_energy_by_layer", "plot_low_rank", "plot_spectrum", "rank_slider", "sample_image"),
    "memory_models": ("PRESET_NAMES", "PRESET_SOURCES", "ModelShape", "load_config", "model_shape"),
    "memory": ("MODEL_NAMES", "MemoryBreakdown", "bytes_per_param", "count_lora_parameters", "count_parameters",
        "model_config"),
    "memory_calculator": ("memory_calculator", "plot_memory_breakdown", "plot_memory_calculator"),
    "memory_cpu": ("CpuMeasurement", "measure_cpu_training_memory", "resident_bytes", "to_bitsandbytes_4bit"),
    "memory_estimate": ("estimate_training_memory",),
    "memory_standins": ("AdamW8bitState", "NF4Linear"),
    "memory_trace": ("measure_training_memory", "trace_training_memory"),
    "models": ("load_model",),
    "nf4": ("QuantState", "dequantize_4bit", "fp4_code", "int4_code", "nf4_code", "pack_4bit", "quantize_4bit",
        "unpack_4bit"),
    "nf4_bitsandbytes": ("from_bitsandbytes", "to_bitsandbytes", "to_linear4bit"),
    "paging": ("MemoryEvent", "MemoryTimeline", "OffloadedAdamW", "OptimizerStateBytes", "PagedAdamW",
        "PagingTraffic", "count_saved_activations", "optimizer_state_bytes", "plot_memory_timeline",
        "record_memory_timeline", "simulate_eviction"),
    "paging_plots": ("budget_slider",),
    "paging_state": ("lora_adapter_shapes",),
    "qlora": ("Dequantize4bitLinear", "QLoRALinear", "prepare_qlora"),
    "qlora_merge": ("dequantize_model",),
    "qlora_memory": ("TrainingMemory", "count_training_memory", "measure_peak_bytes", "random_causal_lm"),
    "qlora_plots": ("answer_table", "plot_training_memory"),
    "train": ("TrainResult", "finetune", "plot_loss_curves"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:  # the same names, imported eagerly for type checkers (mypy, pyright), which do not run __getattr__
    from typing import Any

    from qlora_lessons.adam8bit import AdamW8bit
    from qlora_lessons.adamw import adamw_update_, check_adamw_hyperparameters
    from qlora_lessons.blockwise import QuantError, dequantize_int, quantization_error, quantize_int
    from qlora_lessons.course import LESSONS, Lesson
    from qlora_lessons.data import Example, load_task
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
    from qlora_lessons.env import (
        ComputeDtypeChoice,
        bfloat16_matmul_ratio,
        compute_choice,
        compute_dtype,
        course_mode,
        describe_environment,
        device,
        lesson_seed,
        seed_everything,
        setup_lesson,
        torch_threads,
    )
    from qlora_lessons.evaluate import exact_match, generate_answers
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
    from qlora_lessons.lora_coverage import LeftOutWarning, matrices_outside_linear_layers
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
    from qlora_lessons.lowrank_plots import (
        plot_energy_by_layer,
        plot_low_rank,
        plot_spectrum,
        rank_slider,
        sample_image,
    )
    from qlora_lessons.memory import (
        MODEL_NAMES,
        MemoryBreakdown,
        bytes_per_param,
        count_lora_parameters,
        count_parameters,
        model_config,
    )
    from qlora_lessons.memory_calculator import memory_calculator, plot_memory_breakdown, plot_memory_calculator
    from qlora_lessons.memory_cpu import (
        CpuMeasurement,
        measure_cpu_training_memory,
        resident_bytes,
        to_bitsandbytes_4bit,
    )
    from qlora_lessons.memory_estimate import estimate_training_memory
    from qlora_lessons.memory_models import PRESET_NAMES, PRESET_SOURCES, ModelShape, load_config, model_shape
    from qlora_lessons.memory_standins import AdamW8bitState, NF4Linear
    from qlora_lessons.memory_trace import measure_training_memory, trace_training_memory
    from qlora_lessons.models import load_model
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
        OffloadedAdamW,
        OptimizerStateBytes,
        PagedAdamW,
        PagingTraffic,
        count_saved_activations,
        optimizer_state_bytes,
        plot_memory_timeline,
        record_memory_timeline,
        simulate_eviction,
    )
    from qlora_lessons.paging_plots import budget_slider
    from qlora_lessons.paging_state import lora_adapter_shapes
    from qlora_lessons.qlora import Dequantize4bitLinear, QLoRALinear, prepare_qlora
    from qlora_lessons.qlora_memory import TrainingMemory, count_training_memory, measure_peak_bytes, random_causal_lm
    from qlora_lessons.qlora_merge import dequantize_model
    from qlora_lessons.qlora_plots import answer_table, plot_training_memory
    from qlora_lessons.train import TrainResult, finetune, plot_loss_curves


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use, and keep the name here for the next time."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f"qlora_lessons.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qlora_lessons' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__version__ = "0.1.0"

__all__ = [
    # course and environment (lesson 00)
    "LESSONS", "Lesson", "course_mode", "describe_environment", "device", "seed_everything", "setup_lesson",
    "torch_threads", "lesson_seed", "ComputeDtypeChoice", "bfloat16_matmul_ratio", "compute_choice", "compute_dtype",
    # the course model, the task and its score (lesson 01)
    "load_model", "load_task", "Example", "exact_match", "generate_answers",
    # memory maths (lesson 02)
    "CpuMeasurement", "measure_cpu_training_memory", "resident_bytes", "to_bitsandbytes_4bit",
    "MODEL_NAMES", "PRESET_NAMES", "PRESET_SOURCES", "ModelShape", "load_config", "model_shape",
    "AdamW8bitState", "MemoryBreakdown", "NF4Linear", "bytes_per_param", "count_lora_parameters",
    "count_parameters", "estimate_training_memory", "measure_training_memory", "memory_calculator", "model_config",
    "plot_memory_breakdown", "plot_memory_calculator", "trace_training_memory",
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
    "MemoryEvent", "MemoryTimeline", "OffloadedAdamW", "OptimizerStateBytes", "PagedAdamW", "PagingTraffic",
    "count_saved_activations", "lora_adapter_shapes", "optimizer_state_bytes", "plot_memory_timeline",
    "record_memory_timeline", "simulate_eviction",
    # absmax integer codes (lesson 05)
    "dequantize_int", "quantize_int",
    # AdamW by hand and 8-bit optimizer state (lesson 07)
    "adamw_update_", "check_adamw_hyperparameters", "AdamW8bit", "budget_slider",
    # QLoRA (lesson 08)
    "Dequantize4bitLinear", "QLoRALinear", "prepare_qlora", "TrainingMemory", "count_training_memory",
    "measure_peak_bytes", "random_causal_lm", "answer_table", "plot_training_memory",
    # fine-tuning loop and its loss curves (lessons 01, 04, 07, 08)
    "TrainResult", "finetune", "plot_loss_curves",
    # lessons 03-04 notebooks: energy by layer type, LoRA's size
    "plot_energy_by_layer", "count_lora_params", "describe_lora_size", "lora_calculator", "plot_trainable_vs_rank",
    # every architecture: what the helpers leave out (MoE experts), and 4-bit models back to 16 bits for merging
    "LeftOutWarning", "matrices_outside_linear_layers", "dequantize_model",
]
