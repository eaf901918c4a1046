"""qlora_lessons: the tested library behind the qlora-lessons notebooks.

One module per concept, in lesson order; each is importable on its own. This file only re-exports.
"""

from qlora_lessons.course import LESSONS, Lesson
from qlora_lessons.env import course_mode, describe_environment, device, seed_everything, setup_lesson
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
    "LESSONS",
    "Lesson",
    "MemoryEvent",
    "MemoryTimeline",
    "OptimizerStateBytes",
    "PagedAdamW",
    "PagingTraffic",
    "count_saved_activations",
    "optimizer_state_bytes",
    "plot_memory_timeline",
    "record_memory_timeline",
    "course_mode",
    "describe_environment",
    "device",
    "seed_everything",
    "setup_lesson",
]
