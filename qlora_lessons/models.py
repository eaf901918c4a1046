"""Load the course model, or any Hugging Face causal LM, in full precision or in 4 bits.

``load_model()`` with no arguments gives the bundled course model and its tokenizer, from the files
inside the package: no network. Any other id or a local folder goes to transformers'
``from_pretrained``; ``quantization="nf4"`` or ``"fp4"`` loads the linear layers through
bitsandbytes (``BitsAndBytesConfig``), on the CPU as well as on CUDA.

Left out: 8-bit loading (the course is about 4 bits) and multi-GPU device maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import torch

from qlora_lessons.env import device as course_device

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not when the course is imported
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

COURSE_MODEL = "course-model"
COURSE_MODEL_DIR = Path(__file__).parent / "course_model" / "weights"
QUANTIZATIONS = (None, "nf4", "fp4")


def resolve_model_path(model_id: str | Path) -> str:
    """``"course-model"`` -> the bundled weights folder; a local folder -> itself; anything else unchanged."""
    if not isinstance(model_id, (str, Path)) or str(model_id).strip() == "":
        raise TypeError(f"model_id must be a non-empty string or path, got {model_id!r}")
    if str(model_id) == COURSE_MODEL:
        if not (COURSE_MODEL_DIR / "model.safetensors").exists():
            raise FileNotFoundError(f"the course model's weights are missing from {COURSE_MODEL_DIR}; "
                                    f"run `python -m qlora_lessons.course_model.pretrain` to make them")
        return str(COURSE_MODEL_DIR)
    local = Path(model_id).expanduser()
    return str(local) if local.exists() else str(model_id)


def is_course_model(model_id: str | Path) -> bool:
    """Whether ``model_id`` names the bundled course model: ``"course-model"`` or its weights folder.

    Example: ``is_course_model("course-model") -> True``; ``is_course_model("Qwen/Qwen2.5-0.5B") -> False``.
    """
    if not isinstance(model_id, (str, Path)) or str(model_id).strip() == "":
        raise TypeError(f"model_id must be a non-empty string or path, got {model_id!r}")
    if str(model_id) == COURSE_MODEL:
        return True
    local = Path(model_id).expanduser()
    return local.exists() and local.resolve() == COURSE_MODEL_DIR.resolve()


def course_checks(model_id: str | Path) -> bool:
    """The lessons' switch for their checks on the course model: ``is_course_model(model_id)``, said in a line.

    A lesson checks what it measured on the course model (its size, its layer names, its scores after a
    few minutes of training on facts only it was pretrained on) with asserts. With another ``MODEL_ID`` those
    numbers are different, not wrong: the cells still run and print them, and skip those checks.
    Example: ``COURSE = course_checks(MODEL_ID)`` prints ``MODEL_ID = 'course-model': every check runs.``
    """
    course = is_course_model(model_id)
    if course:
        print(f"MODEL_ID = {str(model_id)!r}: every check runs.")
    else:
        print(f"MODEL_ID = {str(model_id)!r} is not the course model: every cell runs and prints what it measures,\n"
              "and the checks that hold only for the course model (its size, its layer names, its scores after\n"
              "training on the facts it was pretrained on) are skipped: the cells marked `if COURSE:`.")
    return course


def quantization_config(quantization: str, double_quant: bool = True, compute_dtype: torch.dtype = torch.bfloat16):
    """The ``BitsAndBytesConfig`` of QLoRA: 4-bit ``nf4`` (or ``fp4``) weights, nested constants, 16-bit compute."""
    from transformers import BitsAndBytesConfig

    if quantization not in ("nf4", "fp4"):
        raise ValueError(f"quantization must be 'nf4' or 'fp4', got {quantization!r}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_use_double_quant=bool(double_quant), bnb_4bit_compute_dtype=compute_dtype)


@overload
def load_model(model_id: str | Path = ..., quantization: str | None = ..., double_quant: bool = ...,
               compute_dtype: torch.dtype = ..., device: str | torch.device | None = ...,
               dtype: torch.dtype | None = ..., *, tokenizer: Literal[True] = ...
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]: ...
@overload
def load_model(model_id: str | Path = ..., quantization: str | None = ..., double_quant: bool = ...,
               compute_dtype: torch.dtype = ..., device: str | torch.device | None = ...,
               dtype: torch.dtype | None = ..., *, tokenizer: Literal[False]) -> PreTrainedModel: ...
def load_model(model_id: str | Path = COURSE_MODEL, quantization: str | None = None, double_quant: bool = True,
               compute_dtype: torch.dtype = torch.bfloat16, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, *, tokenizer: bool = True
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | PreTrainedModel:
    """Load a causal LM and its tokenizer: ``(model, tokenizer)``, the model in eval mode.

    ``quantization=None`` loads the checkpoint's own dtype (float32 for the course model) unless
    ``dtype`` is given; ``"nf4"``/``"fp4"`` stores the linear layers in 4 bits (``double_quant``
    quantizes their constants too) and computes in ``compute_dtype`` (on the CPU, in the layout it trains
    in: see ``keep_4bit_training_layout``). ``device=None`` is the course
    device (``cuda`` in GPU mode, else ``cpu``). The tokenizer pads on the left, for batched generation.
    ``tokenizer=False`` returns the model alone (a folder of weights without tokenizer files, e.g. a
    model built from a config and saved); with ``tokenizer=True`` a local folder without tokenizer files
    is a ``FileNotFoundError`` naming the folder and the files looked for.

    Example: ``model, tokenizer = load_model()`` -> the course model (about 2.8M parameters) on the CPU;
    ``model = load_model(folder, tokenizer=False)`` -> the model only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
        raise TypeError(f"compute_dtype must be a floating torch.dtype, got {compute_dtype!r}")
    if not isinstance(tokenizer, bool):
        raise TypeError(f"tokenizer must be True or False, got {tokenizer!r}")
    path = resolve_model_path(model_id)
    if tokenizer:
        check_tokenizer_files(path)
    target = torch.device(device) if device is not None else course_device()
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if quantization is not None:
        kwargs = {"quantization_config": quantization_config(quantization, double_quant, compute_dtype),
                  "dtype": dtype or compute_dtype, "device_map": {"": str(target)}}
    try:
        loaded = AutoTokenizer.from_pretrained(path) if tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        if Path(path).exists():
            raise
        raise OSError(
            f"could not load {model_id!r}: it is not a local folder and the Hugging Face hub could not be "
            f"reached or has no such model (offline mode: HF_HUB_OFFLINE is set, or there is no network). "
            f"Use load_model('{COURSE_MODEL}') for the bundled course model, or pass the path of a folder "
            f"with a downloaded model. ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    if quantization is None:
        model.to(target)
    elif target.type == "cpu":
        keep_4bit_training_layout(model)
    if quantization is not None:  # bitsandbytes replaces nn.Linear layers only: say what stays in 16 bits
        from qlora_lessons.lora_coverage import warn_left_out

        warn_left_out(model, "loading in 4 bits (BitsAndBytesConfig) quantizes")
    model.eval()
    if loaded is None:
        return model
    if len(loaded) < 2:  # transformers builds some tokenizer classes (Qwen2, GPT-2) from no files at all
        raise ValueError(f"the tokenizer loaded for {model_id!r} from {path} has {len(loaded)} token(s); "
                         f"pass tokenizer=False to load the model alone")
    if loaded.pad_token is None:  # many hub models have none; generation needs one
        loaded.pad_token = loaded.eos_token
    loaded.padding_side = "left"
    return model, loaded


# A tokenizer is one of these in a model folder (transformers' file names): a fast tokenizer, a sentencepiece
# model, a WordPiece vocabulary, or a byte-level BPE vocabulary with its merges.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("spiece.model",), ("sentencepiece.bpe.model",),
                   ("vocab.txt",), ("vocab.json", "merges.txt"))


def check_tokenizer_files(path: str | Path) -> None:
    """Raise ``FileNotFoundError`` if the local folder ``path`` has none of the ``TOKENIZER_FILES``.

    Without them transformers fails deep in sentencepiece (Llama, Phi-3) or builds an empty tokenizer
    that turns every text into nothing (Qwen2, GPT-2, OPT). A hub id (not a local folder) is not checked.
    Example: ``check_tokenizer_files(COURSE_MODEL_DIR)`` -> None (it has ``tokenizer.json``).
    """
    folder = Path(path)
    if not folder.is_dir() or any(all((folder / name).is_file() for name in files) for files in TOKENIZER_FILES):
        return
    looked_for = ", ".join(" + ".join(files) for files in TOKENIZER_FILES)
    raise FileNotFoundError(f"{folder} has no tokenizer files (looked for one of: {looked_for}); pass "
                            f"tokenizer=False to load the model alone, or save its tokenizer there "
                            f"(tokenizer.save_pretrained(folder))")


def keep_4bit_training_layout(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from re-packing 4-bit weights for its CPU inference kernel; return how many layers.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 (``Linear4bit.forward``): the first forward in eval mode
    without gradients re-packs the weight for a fused bfloat16 kernel, rounds its constants to bfloat16
    and undoes double quantization, in place. That kernel has no backward, so a model evaluated before it
    is fine-tuned trains with no gradient through its 4-bit layers (only a UserWarning says so), and the
    same model answers differently on CPUs with and without AVX512-BF16. ``load_model`` calls this for
    4-bit models on the CPU: the weights stay as quantized, the ordinary dequantize-and-matmul path runs.
    Example: ``keep_4bit_training_layout(model)`` -> 28 for the course model loaded in 4 bits.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        setattr(layer, "support_avx512bf16_for_cpu", False)  # noqa: B010  (an attribute of bitsandbytes' layer)
    return len(layers)


def count_model_parameters(model: torch.nn.Module) -> int:
    """Number of parameters as the model was built (a 4-bit weight of n values counts n, not n / 2 bytes)."""
    total = 0
    for parameter in model.parameters():
        shape = getattr(parameter, "quant_state", None)
        total += shape.shape.numel() if shape is not None else parameter.numel()
    return total
