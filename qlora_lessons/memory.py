"""Memory of fine-tuning, part 1: bytes per parameter, the published shapes, parameter counts.

Training memory has four parts: the weights, their gradients, the optimizer state and the
activations kept for the backward pass. This module holds what every estimate starts from: how
many bytes one number takes in each dtype (``bytes_per_param``), the transformers config of a
published shape (``model_config``, no download), how many parameters and LoRA parameters a
model has (``count_parameters``, ``count_lora_parameters``, from ``memory_layout.py``), and the
result type ``MemoryBreakdown``. Shapes and presets of every family are in ``memory_models.py``.
The formulas are in ``memory_estimate.py``; traced and measured steps in ``memory_trace.py``.

Left out: encoder-decoder models (the counts are for decoder-only causal LMs).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from qlora_lessons.memory_layout import (  # noqa: F401  (re-exported: memory.py is where lesson 02 finds them)
    LINEAR_NAMES,
    check_config,
    check_targets,
    count_lora_parameters,
    count_parameters,
    layer_linears,
    linear_shapes,
    shape_of,
    targeted,
)
from qlora_lessons.memory_models import PRESET_NAMES, PRESETS, load_config

if TYPE_CHECKING:  # transformers is imported when a config is made, not with the package
    from transformers import PretrainedConfig

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "nf4": 4, "fp4": 4}
MODEL_NAMES = tuple(name for name in PRESET_NAMES if name.startswith("llama-") and "3.1" not in name)  # LLaMA-1/2


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
    else:
        raise TypeError(f"dtype must be a torch.dtype or a string such as 'nf4', got {type(dtype).__name__}")
    if name not in _DTYPE_BITS:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPE_BITS)}")
    return name


def bytes_per_param(dtype: torch.dtype | str, *, quant_constants: bool = False, blocksize: int = 64,
                    double_quant: bool = False) -> float:
    """Bytes that one parameter takes in ``dtype``, optionally with its share of the quantization constants.

    Equation: bits / 8, plus for 4-bit codes 4 / blocksize (one float32 absmax per block) or, with
    double quantization, 1 / blocksize + 4 / (256 * blocksize) (one uint8 absmax per block and one
    float32 per 256 blocks; QLoRA paper, section 3, "Double Quantization"). The float types have no
    constants, and int8 here is plain 8-bit storage. Shapes: scalars only.
    Example: ``bytes_per_param("nf4", quant_constants=True) -> 0.5625`` (4.5 bits).
    """
    name = _dtype_name(dtype)
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    value = _DTYPE_BITS[name] / 8
    if quant_constants and name in ("nf4", "fp4"):
        value += (1 / blocksize + 4 / (256 * blocksize)) if double_quant else 4 / blocksize
    return value


def model_config(name: str) -> PretrainedConfig:
    """The transformers config of preset ``name`` (``PRESET_NAMES``), LlamaConfig for Llama; nothing is downloaded.

    Example: ``model_config("llama-13b").hidden_size -> 5120``; vocabulary 32,000 for LLaMA-1 and 2.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name such as 'llama-13b', got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"name {name!r} is not a known model; choose from {', '.join(PRESET_NAMES)}")
    return to_transformers_config(PRESETS[name])


def to_transformers_config(config) -> PretrainedConfig:
    """The ``transformers`` config class of the model's family, made from anything ``load_config`` reads."""
    if hasattr(config, "to_dict") and hasattr(config, "model_type"):
        return config
    from transformers import AutoConfig

    values = load_config(config, "config")
    try:
        return AutoConfig.for_model(**values)
    except (ValueError, KeyError) as error:
        raise ValueError(f"config has model_type {values['model_type']!r}, which this transformers does not know: "
                         f"{error}") from None


def _gb(n_bytes: float) -> str:
    """Bytes as a human reads them: ``_gb(208e9) -> "208.0 GB"``, ``_gb(4.2e6) -> "4.2 MB"``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes:.0f} B"


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of one training step by part, and ``total``: the peak, the most held at any one moment.

    ``total`` is not the sum of the parts: the backward pass frees activations while it makes the
    gradients, so they are not all held at once (``estimate_training_memory`` gives the rule).
    ``label`` says where the numbers come from: "estimate", "trace" or "measured".
    Example: ``MemoryBreakdown(52e9, 0, 0, 52e9, 104e9, 0, 208e9, "estimate")`` prints in GB.
    """

    weights: float
    quant_constants: float
    adapters: float
    gradients: float
    optimizer: float
    activations: float
    total: float
    label: str = "estimate"

    PARTS = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "activations")

    def parts(self) -> dict[str, float]:
        """The six parts, in bytes, in the order of ``PARTS``."""
        return {name: getattr(self, name) for name in self.PARTS}

    def __repr__(self) -> str:
        body = ", ".join(f"{f.name}={_gb(getattr(self, f.name))}" for f in fields(self) if f.name != "label")
        return f"MemoryBreakdown[{self.label}]({body})"
