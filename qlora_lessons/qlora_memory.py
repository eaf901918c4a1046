"""What full fine-tuning, LoRA and QLoRA keep in memory: counted from the tensors, or measured on a GPU.

    total = frozen weights + quantization constants + trainable parameters + gradients + optimizer state

``count_training_memory(model, optimizer)`` adds up the bytes of the tensors a training run really holds
(each storage once, so tied weights count once): 4-bit codes count half a byte per weight, their
constants (absmax, the nested 8-bit codes, the code tables) are shown apart, gradients are the ``.grad``
tensors that exist, the optimizer state is every tensor in ``optimizer.state``. It works for
bitsandbytes ``Linear4bit`` models (transformers + peft) and for ``qlora.QLoRALinear`` ones.
``measure_peak_bytes(step)`` measures instead, on CUDA: the allocator's peak during one call, which
includes the activations that counting leaves out. ``random_causal_lm(config, quantization)`` builds a
model of any size with random weights straight on the device, in 16 or 4 bits, so that a 7B
architecture can be measured where nothing can be downloaded.

Left out: activations on the CPU (lesson 07 counts the saved ones), allocator fragmentation and the
CUDA context; all of these appear in the measured peak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qlora_lessons.paging_state import format_gb

_CONSTANT_BUFFERS = ("absmax", "code", "absmax2", "code2")  # QLoRALinear's quantization constants


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes held by one training setup, by kind (each storage counted once)."""

    weight_bytes: int  # frozen parameters and buffers: float weights, or 4-bit codes at half a byte each
    constant_bytes: int  # quantization constants of the 4-bit weights, code tables included
    trainable_bytes: int  # parameters with requires_grad
    gradient_bytes: int  # .grad tensors that exist now
    optimizer_bytes: int  # every tensor in optimizer.state

    @property
    def total_bytes(self) -> int:
        """Everything counted: weights + constants + trainable + gradients + optimizer state."""
        return (self.weight_bytes + self.constant_bytes + self.trainable_bytes + self.gradient_bytes
                + self.optimizer_bytes)

    def __repr__(self) -> str:
        parts = [("weights", self.weight_bytes), ("constants", self.constant_bytes),
                 ("trainable", self.trainable_bytes), ("gradients", self.gradient_bytes),
                 ("optimizer", self.optimizer_bytes)]
        return (f"TrainingMemory({format_gb(self.total_bytes)}: "
                + ", ".join(f"{name} {format_gb(n)}" for name, n in parts) + ")")


def _key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _quant_state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState: absmax, code, offset, and the nested state's absmax and code."""
    tensors = [state.absmax, state.code, getattr(state, "offset", None)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors += [nested.absmax, nested.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def count_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainingMemory:
    """Bytes of weights, quantization constants, trainable parameters, gradients and optimizer state.

    Equation: each kind = sum over its tensors of numel * element_size, each storage once.
    Shapes: a model (and its optimizer) in, a TrainingMemory out.
    Example: a float32 ``nn.Linear(1000, 1000, bias=False)`` after one torch AdamW step -> trainable
    4,000,000 bytes, gradients 4,000,000, optimizer 8,000,004 (m and v, and a float32 step counter).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    seen: set[tuple[str, int]] = set()

    def once(tensors) -> int:
        total = 0
        for t in tensors:
            if t is not None and _key(t) not in seen and t.device.type != "meta":
                seen.add(_key(t))
                total += t.untyped_storage().nbytes()
        return total

    constants = []
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:  # bitsandbytes Params4bit
            constants += _quant_state_tensors(state)
        constants += [b for name, b in module.named_buffers(recurse=False) if name in _CONSTANT_BUFFERS
                      and type(module).__name__ == "QLoRALinear"]
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    constant_bytes = once(constants)
    trainable_bytes = once(trainable)
    weight_bytes = once([p for p in parameters if not p.requires_grad] + list(model.buffers()))
    gradient_bytes = once([p.grad for p in parameters if p.grad is not None])
    optimizer_bytes = 0
    if optimizer is not None:
        optimizer_bytes = once([v for state in optimizer.state.values() for v in state.values()
                                if isinstance(v, torch.Tensor)])
    return TrainingMemory(weight_bytes, constant_bytes, trainable_bytes, gradient_bytes, optimizer_bytes)


def measure_peak_bytes(step: Callable[[], object]) -> int:
    """Peak CUDA memory allocated while ``step()`` runs (``torch.cuda.max_memory_allocated``), in bytes.

    Includes everything alive during the call: weights, activations, gradients, optimizer state.
    Example: ``measure_peak_bytes(lambda: train_one_step(model, batch))`` -> e.g. 9_300_000_000. CUDA only.
    """
    if not callable(step):
        raise TypeError(f"step must be a callable, got {type(step).__name__}")
    if not torch.cuda.is_available():
        raise RuntimeError("measure_peak_bytes needs CUDA; on the CPU use count_training_memory")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def random_causal_lm(config, quantization: str | None = None, dtype: torch.dtype = torch.bfloat16,
                     device: str | torch.device = "cpu", double_quant: bool = True, std: float = 0.02,
                     seed: int = 0) -> nn.Module:
    """A causal LM of ``config``'s architecture with random N(0, std^2) weights, built directly on ``device``.

    With ``quantization="nf4"`` (or ``"fp4"``) each linear layer but the output head is drawn in ``dtype``,
    quantized by bitsandbytes and stored as a ``Linear4bit`` (one layer's 16-bit weight exists at a time),
    so a 7B model never needs its 13.5 GB of 16-bit weights in memory. Norms start at one.
    Shapes: the architecture of ``config`` (a transformers ``PretrainedConfig``).
    Example: ``random_causal_lm(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, vocab_size=32000), "nf4", device="cuda")`` -> a 6.7B-parameter model in ~3.9 GB.
    """
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from qlora_lessons.nf4_bitsandbytes import from_bitsandbytes, to_linear4bit

    if quantization not in (None, "nf4", "fp4"):
        raise ValueError(f"quantization must be None, 'nf4' or 'fp4', got {quantization!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = torch.device(device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    head = model.get_output_embeddings()
    generator = torch.Generator(device).manual_seed(seed)
    for name, module in list(model.named_modules()):
        if quantization is not None and isinstance(module, nn.Linear) and module is not head:
            w = torch.randn(module.out_features, module.in_features, generator=generator, device=device) * std
            packed, state = bnb.functional.quantize_4bit(w.to(dtype), blocksize=64, quant_type=quantization,
                                                         compress_statistics=double_quant)
            del w  # only the packed codes stay
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child,
                    to_linear4bit(packed.view(-1), from_bitsandbytes(state), compute_dtype=dtype))
        elif "RotaryEmbedding" in type(module).__name__:  # its buffers are computed, not drawn
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config).to(device))
        else:
            module.to_empty(device=device, recurse=False)
            for parameter in module.parameters(recurse=False):
                with torch.no_grad():  # weights N(0, std^2), norms and other vectors 1 (as initializers do)
                    parameter.normal_(0, std, generator=generator) if parameter.dim() > 1 else parameter.fill_(1)
    if head is not None and getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
