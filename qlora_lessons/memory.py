"""Memory of fine-tuning, part 1: bytes per parameter, the published Llama shapes, parameter counts.

Training memory has four parts: the weights, their gradients, the optimizer state and the
activations kept for the backward pass. This module holds what every estimate starts from: how
many bytes one number takes in each dtype (``bytes_per_param``), the shapes of the Llama models the
course talks about (``model_config``, no download), how many parameters and LoRA parameters a
shape has (``count_parameters``, ``count_lora_parameters``), and the result type ``MemoryBreakdown``.
The formulas are in ``memory_estimate.py``; traced and measured steps in ``memory_trace.py``.

Left out: models other than the Llama family (the counts assume its layer layout: attention q, k,
v, o and a gated MLP gate, up, down, RMSNorms, no biases).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers is imported when a config is made or checked, not with the package
    from transformers import LlamaConfig

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "nf4": 4, "fp4": 4}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Published shapes: the config.json of huggyllama/llama-{7b,13b,30b,65b} and meta-llama/Llama-2-{7b,13b,70b}-hf
# on the Hugging Face hub; the LLaMA ones match Table 2 of the LLaMA paper (Touvron et al. 2023).
_SHAPES = {  # name: (hidden_size, intermediate_size, layers, heads, kv_heads, max_positions, rms_norm_eps)
    "llama-7b": (4096, 11008, 32, 32, 32, 2048, 1e-6),
    "llama-13b": (5120, 13824, 40, 40, 40, 2048, 1e-6),
    "llama-33b": (6656, 17920, 60, 52, 52, 2048, 1e-6),
    "llama-65b": (8192, 22016, 80, 64, 64, 2048, 1e-5),
    "llama-2-7b": (4096, 11008, 32, 32, 32, 4096, 1e-5),
    "llama-2-13b": (5120, 13824, 40, 40, 40, 4096, 1e-5),
    "llama-2-70b": (8192, 28672, 80, 64, 8, 4096, 1e-5),
}
MODEL_NAMES = tuple(_SHAPES)


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


def model_config(name: str) -> LlamaConfig:
    """A ``LlamaConfig`` with the published shape of ``name`` (one of ``MODEL_NAMES``); nothing is downloaded.

    Example: ``model_config("llama-13b").hidden_size -> 5120``; vocabulary 32,000 for all of them.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name such as 'llama-13b', got {type(name).__name__}")
    if name not in _SHAPES:
        raise ValueError(f"name {name!r} is not a known model; choose from {', '.join(MODEL_NAMES)}")
    from transformers import LlamaConfig

    hidden, intermediate, layers, heads, kv_heads, positions, eps = _SHAPES[name]
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=positions, rms_norm_eps=eps, tie_word_embeddings=False)


def check_config(config: LlamaConfig, argument: str = "model") -> LlamaConfig:
    """Raise unless ``config`` is a LlamaConfig with positive sizes; returns it."""
    from transformers import LlamaConfig

    if not isinstance(config, LlamaConfig):
        raise TypeError(f"{argument} must be a transformers LlamaConfig (see model_config), "
                        f"got {type(config).__name__}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        value = getattr(config, key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument}.{key} must be a positive int, got {value!r}")
    return config


def linear_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """The (out, in) shape of each linear layer in one decoder layer, by name.

    Example: llama-7b -> {"q_proj": (4096, 4096), ..., "k_proj": (4096, 4096), "down_proj": (4096, 11008)}.
    """
    h, i = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, (config.num_key_value_heads or config.num_attention_heads) * head_dim
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def count_parameters(config: LlamaConfig) -> dict[str, int]:
    """Parameters of a Llama model by kind: ``linear`` (decoder layers), ``embeddings`` (input and lm_head), ``norms``.

    Equation: linear = L * sum(out * in over the 7 matrices); embeddings = 2 * V * h (untied);
    norms = (2 L + 1) * h.
    Example: ``sum(count_parameters(model_config("llama-7b")).values()) -> 6738415616``.
    """
    check_config(config, "config")
    h, layers = config.hidden_size, config.num_hidden_layers
    linear = layers * sum(out * inp for out, inp in linear_shapes(config).values())
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return {"linear": linear, "embeddings": embeddings, "norms": (2 * layers + 1) * h}


def count_lora_parameters(config: LlamaConfig, r: int, targets: tuple[str, ...] | list[str] | str) -> int:
    """Trainable parameters of LoRA adapters of rank ``r`` on ``targets`` in every decoder layer.

    Equation: L * sum over targeted W (out, in) of r * (in + out)  (A is (r, in), B is (out, r)).
    Example: ``count_lora_parameters(model_config("llama-7b"), 8, ("q_proj", "v_proj")) -> 4194304``.
    """
    shapes = linear_shapes(check_config(config, "config"))
    names = check_targets(targets)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"lora_r must be a positive int, got {r!r}")
    for name in names:
        if r > min(shapes[name]):
            raise ValueError(f"lora_r={r} is larger than the {name} matrix {shapes[name]} allows "
                             f"(a rank is at most min(out, in) = {min(shapes[name])})")
    return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in names)


def check_targets(targets: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """The target names as a tuple: ``"all-linear"`` means all seven matrices of a decoder layer."""
    if targets == "all-linear":
        return LINEAR_NAMES
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets:
        raise ValueError(f"lora_targets must be 'all-linear' or a non-empty tuple of names from {LINEAR_NAMES}, "
                         f"got {targets!r}")
    unknown = [name for name in targets if name not in LINEAR_NAMES]
    if unknown:
        raise ValueError(f"lora_targets has unknown names {unknown}; choose from {LINEAR_NAMES}")
    return tuple(dict.fromkeys(targets))


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
