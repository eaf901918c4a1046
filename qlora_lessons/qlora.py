"""QLoRA from scratch: a frozen 4-bit NF4 weight plus a LoRA update, h = dequant(W0_nf4) x + b + (alpha / r) B A x.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", section 3, equation (5):
    Y = X doubleDequant(c1, c2, W_nf4) + X L1 L2 s
The frozen W0 is stored as packed 4-bit NF4 codes with double-quantized constants (lessons 05-06:
``nf4.quantize_4bit``), about 4.127 bits per weight. It is rebuilt in the compute dtype (bfloat16)
inside each matrix multiplication and thrown away right after: in the forward pass, and again in the
backward pass, where only the gradient with respect to the input is needed (W0 is frozen), so only the
packed codes are kept for backward. The LoRA factors A and B are ordinary trainable tensors in the
compute dtype, with the layouts, initialization and forward of ``lora_layer.LoRAAdapter`` (peft's).

- ``QLoRALinear.from_linear(linear, r, alpha, ...)``: quantize an ``nn.Linear`` and attach an adapter.
- ``prepare_qlora(model, r, lora_alpha, target_modules)`` (peft's names): do that to the targeted layers
  of a model, in place, and freeze everything else (the output head is left out of ``"all-linear"``, as
  peft does; GPT-2's ``Conv1D`` weights are transposed to (out, in) first; MoE experts stored as 3-D
  tensors are not linear layers and stay as they are, with a ``LeftOutWarning``).

The real stack (bitsandbytes ``Linear4bit`` + peft) computes the same numbers: tests/test_qlora.py.
Left out: paged optimizers (lesson 07), gradient checkpointing, several adapters per layer, merging
(into a 16-bit copy with ``dequantize_weight``; into the 4-bit weight, which quantizes W4 + dW again and
rounds most of a small dW away: ``qlora_merge``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from qlora_lessons.blockwise import check_blocksize
from qlora_lessons.double_quant import Blockwise8bitState
from qlora_lessons.lora import ALL_LINEAR, _plan
from qlora_lessons.lora_coverage import warn_left_out
from qlora_lessons.lora_experts import add_parameter_lora
from qlora_lessons.lora_layer import LoRAAdapter, check_lora_hyperparameters, is_conv1d, linear_features
from qlora_lessons.nf4 import QuantState, dequantize_4bit, quantize_4bit
from qlora_lessons.renamed_arguments import renamed_arguments

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Dequantize4bitLinear(torch.autograd.Function):
    """y = x W^T + b with W = dequantize_4bit(packed, state) rebuilt in forward and again in backward.

    Backward: dL/dx = dL/dy W (the same W, rebuilt from the packed codes); W and b are frozen, no gradients.
    Only ``packed`` (n / 2 bytes) is saved for backward, never the dequantized W (n * 2 bytes in bfloat16).
    Shapes: x (..., in), packed ((out * in + 1) // 2,) uint8, state.shape (out, in), bias (out,) -> (..., out).
    Source: bitsandbytes ``MatMul4Bit`` (forward ``F.linear(x, dequantize_4bit(W).to(x.dtype), bias)``,
    backward ``grad_output @ dequantize_4bit(W).to(grad_output.dtype)``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: torch.Tensor, state: QuantState,
                bias: torch.Tensor | None) -> torch.Tensor:
        weight = dequantize_4bit(packed, state).to(x.dtype)  # (out, in): exists only during this call
        ctx.state = state  # the constants are module buffers already; nothing is copied
        ctx.save_for_backward(packed)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))  # (..., out)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (packed,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_4bit(packed, ctx.state).to(grad_output.dtype)  # (out, in), rebuilt again
            grad_x = torch.matmul(grad_output, weight)  # (..., out) @ (out, in) -> (..., in)
        return grad_x, None, None, None


class QLoRALinear(nn.Module):
    """A linear layer whose frozen weight is stored in 4 bits, plus a trainable LoRA update.

    Equation: h = x dequant(W0_nf4)^T + b + (alpha / r) B A dropout(x), matrix products in ``compute_dtype``.
    Shapes: x (..., in_features) -> h (..., out_features); lora_A (r, in_features), lora_B (out_features, r);
    the weight as ``weight_4bit`` ((out * in + 1) // 2,) uint8 and its constants as buffers.
    Example: ``QLoRALinear.from_linear(nn.Linear(256, 512), r=16, lora_alpha=32)`` stores 65,536 bytes of codes
    plus 2,048 one-byte constants (and 8 float32 second-level ones) instead of 524,288 bytes of float32.
    """

    @renamed_arguments(alpha="lora_alpha", dropout="lora_dropout")
    def __init__(self, packed: torch.Tensor, state: QuantState, bias: torch.Tensor | None = None, r: int = 16,
                 lora_alpha: float = 32, lora_dropout: float = 0.0,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        if not isinstance(state, QuantState) or len(state.shape) != 2:
            raise TypeError(f"state must be the QuantState of a 2-D (out, in) weight, got {state!r}")
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
            raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
        out_features, in_features = state.shape
        if packed.numel() != (out_features * in_features + 1) // 2:
            raise ValueError(f"packed has {packed.numel()} bytes; a {state.shape} weight needs "
                             f"{(out_features * in_features + 1) // 2}")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise TypeError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        check_lora_hyperparameters(r, lora_alpha, lora_dropout)
        if r > min(in_features, out_features):
            raise ValueError(f"r must be <= min(in_features, out_features) = {min(in_features, out_features)}, "
                             f"got r={r}")
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        self.register_buffer("weight_4bit", packed.reshape(-1))  # (n / 2,) uint8: two NF4 codes per byte
        self.register_buffer("absmax", state.absmax)  # float32, or uint8 codes when double-quantized
        self.register_buffer("code", state.code)  # (16,) float32: the NF4 levels
        nested = state.state2 is not None
        self.register_buffer("absmax2", state.state2.absmax if nested else None)  # float32 per 256 constants
        self.register_buffer("code2", state.state2.code if nested else None)  # (256,) the dynamic map
        self._meta = (state.blocksize, state.dtype, state.quant_type, state.offset,
                      state.state2.blocksize if nested else None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(compute_dtype).clone())
        self.adapter = LoRAAdapter(in_features, out_features, r, lora_alpha, lora_dropout, compute_dtype,
                                   packed.device)

    @classmethod
    @renamed_arguments(alpha="lora_alpha", dropout="lora_dropout")
    def from_linear(cls, linear: nn.Module, r: int = 16, lora_alpha: float = 32, lora_dropout: float = 0.0,
                    blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.bfloat16) -> QLoRALinear:
        """Quantize ``linear.weight`` to NF4 (``quantize_4bit``) and attach a fresh adapter (A random, B zero).

        Example: ``QLoRALinear.from_linear(nn.Linear(64, 32), r=4, lora_alpha=8)(x)`` ~= ``linear(x)`` up to
        the 4-bit rounding of W0, because B starts at zero. A GPT-2 ``Conv1D`` (weight (in, out)) is
        quantized as its transpose, W0 (out, in), as bitsandbytes' ``Linear4bit`` stores it.
        """
        if not isinstance(linear, nn.Linear) and not is_conv1d(linear):
            raise TypeError(f"linear must be a torch.nn.Linear or a transformers Conv1D, got {type(linear).__name__}")
        check_blocksize(blocksize)
        if compute_dtype not in COMPUTE_DTYPES:
            raise TypeError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        weight = linear.weight.T.contiguous() if is_conv1d(linear) else linear.weight  # (out, in)
        packed, state = quantize_4bit(weight, blocksize=blocksize, quant_type="nf4", double_quant=double_quant)
        return cls(packed, state, linear.bias, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                   compute_dtype=compute_dtype)

    @property
    def quant_state(self) -> QuantState:
        """The weight's ``QuantState``, rebuilt from the buffers (so it follows ``.to(device)``)."""
        blocksize, dtype, quant_type, offset, blocksize2 = self._meta
        state2 = None
        if self.absmax2 is not None:
            state2 = Blockwise8bitState(self.absmax2, self.code2, blocksize2, (self.absmax.numel(),), torch.float32)
        return QuantState(self.absmax, blocksize, (self.out_features, self.in_features), dtype, quant_type,
                          self.code, offset, state2)

    lora_A = property(lambda self: self.adapter.lora_A, doc="A (r, in_features), trainable")
    lora_B = property(lambda self: self.adapter.lora_B, doc="B (out_features, r), trainable")
    r = property(lambda self: self.adapter.r, doc="the rank r")
    alpha = property(lambda self: self.adapter.alpha, doc="alpha")
    scaling = property(lambda self: self.adapter.scaling, doc="alpha / r")

    @property
    def weight_bytes(self) -> int:
        """Bytes of the stored frozen weight: n / 2 of codes + the constants + the 16-level (and 256-level) codes."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    def dequantize_weight(self) -> torch.Tensor:
        """W0 as the 4-bit codes represent it, (out, in) in the compute dtype (for merging or inspection)."""
        return dequantize_4bit(self.weight_4bit, self.quant_state).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = base(x) + (alpha / r) B A dropout(x), in peft's order for a bitsandbytes base layer."""
        base = Dequantize4bitLinear.apply(x.to(self.compute_dtype), self.weight_4bit, self.quant_state, self.bias)
        result = base.to(x.dtype)  # (..., out): bitsandbytes' Linear4bit returns the input's dtype
        update = self.adapter(x.to(self.lora_A.dtype))  # (..., out); peft casts the input to A's dtype
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        nested = ", double-quantized" if self.absmax2 is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4{nested}, "
                f"compute_dtype={self.compute_dtype}, {self.weight_bytes:,} bytes of frozen weight")


@renamed_arguments(alpha="lora_alpha", dropout="lora_dropout", targets="target_modules")
def prepare_qlora(model: nn.Module, r: int = 16, lora_alpha: float = 32,
                  target_modules: str | Sequence[str] = ALL_LINEAR, lora_dropout: float = 0.0, blocksize: int = 64,
                  double_quant: bool = True, compute_dtype: torch.dtype = torch.bfloat16,
                  target_parameters: Sequence[str] | None = None) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by ``QLoRALinear`` in place, freeze the rest, return the model.

    Equation: each targeted layer becomes h = x dequant(W0_nf4)^T + b + (lora_alpha / r) B A dropout(x).
    Targets are matched as in ``lora.add_lora``: ``"all-linear"`` takes every linear layer except the
    output head (peft leaves out ``get_output_embeddings()`` too), or a list of names (``["q_proj"]``).
    Shapes: a layer with W0 (out, in) gets lora_A (r, in), lora_B (out, r) and (out * in) / 2 bytes of codes.
    Example: on the course model (4 layers, hidden 256, MLP 512), ``prepare_qlora(model, r=2, lora_alpha=4)``
    replaces 28 layers and leaves 34,816 trainable parameters. Matrices that are not linear layers (MoE
    experts, routers) stay as they are, in 16 bits, with a ``LeftOutWarning`` naming them (bitsandbytes
    quantizes linear layers only too); ``target_parameters`` puts LoRA on them (``lora_experts``, as peft), and
    so does ``"all-linear"`` where peft's "all-linear" does (Mixtral, Qwen-MoE, OLMoE: ``lora.add_lora``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_lora_hyperparameters(r, lora_alpha, lora_dropout)
    check_blocksize(blocksize)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {double_quant!r}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise TypeError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    names, tensors, ranks = _plan(model, target_modules, target_parameters, r, lora_alpha)
    names = [name for name in names
             if isinstance(model.get_submodule(name), nn.Linear) or is_conv1d(model.get_submodule(name))]
    if not names:
        raise ValueError(f"target_modules={target_modules!r} selects no nn.Linear layer of {type(model).__name__} "
                         "(already prepared?)")
    for name in names:  # every check before the first change, so a bad call leaves the model as it was
        if r > min(linear_features(model.get_submodule(name))):
            raise ValueError(f"r must be <= min(in_features, out_features) = "
                             f"{min(linear_features(model.get_submodule(name)))} for {name}, got r={r}")
    warn_left_out(model, "prepare_qlora quantizes")
    model.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        layer = QLoRALinear.from_linear(model.get_submodule(name), r, lora_alpha, lora_dropout, blocksize,
                                        double_quant, compute_dtype)
        setattr(model.get_submodule(parent) if parent else model, child, layer.train(model.training))
    add_parameter_lora(model, tensors, r, lora_alpha, ranks=ranks)
    return model
