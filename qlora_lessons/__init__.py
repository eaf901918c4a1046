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

__version__ = "0.1.0"

__all__ = [
    "LESSONS",
    "Lesson",
    "course_mode",
    "describe_environment",
    "device",
    "seed_everything",
    "setup_lesson",
    # nf4, double_quant (lessons 05-06)
    "Blockwise8bitState",
    "ConstantsMemory",
    "QuantError",
    "QuantState",
    "bits_per_param",
    "dequantize_4bit",
    "dequantize_absmax",
    "dequantize_blockwise_8bit",
    "dynamic_map",
    "estimate_constants_memory",
    "fp4_code",
    "from_bitsandbytes",
    "int4_code",
    "nf4_code",
    "pack_4bit",
    "quantization_error",
    "quantize_4bit",
    "quantize_absmax",
    "quantize_blockwise_8bit",
    "to_bitsandbytes",
    "to_linear4bit",
    "unpack_4bit",
]
