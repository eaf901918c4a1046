"""qlora_lessons: the tested library behind the qlora-lessons notebooks.

One module per concept, in lesson order; each is importable on its own. This file only re-exports.
"""

from qlora_lessons.course import LESSONS, Lesson
from qlora_lessons.env import course_mode, describe_environment, device, seed_everything, setup_lesson
from qlora_lessons.memory import (
    MODEL_NAMES,
    MemoryBreakdown,
    bytes_per_param,
    count_lora_parameters,
    count_parameters,
    model_config,
)
from qlora_lessons.memory_calculator import memory_calculator, plot_memory_breakdown, plot_memory_calculator
from qlora_lessons.memory_estimate import estimate_training_memory
from qlora_lessons.memory_standins import AdamW8bitState, NF4Linear
from qlora_lessons.memory_trace import measure_training_memory, trace_training_memory

__version__ = "0.1.0"

__all__ = [
    "LESSONS",
    "Lesson",
    "course_mode",
    "describe_environment",
    "device",
    "seed_everything",
    "setup_lesson",
    # lesson 02: memory
    "MODEL_NAMES",
    "AdamW8bitState",
    "MemoryBreakdown",
    "NF4Linear",
    "bytes_per_param",
    "count_lora_parameters",
    "count_parameters",
    "estimate_training_memory",
    "measure_training_memory",
    "memory_calculator",
    "model_config",
    "plot_memory_breakdown",
    "plot_memory_calculator",
    "trace_training_memory",
]
