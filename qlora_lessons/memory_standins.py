"""Plain-tensor stand-ins for the bitsandbytes pieces of QLoRA, so that a training step can be traced.

bitsandbytes keeps a 4-bit weight in a ``Params4bit`` tensor subclass and updates 8-bit optimizer
state in fused CUDA kernels; neither runs under ``FakeTensorMode`` (tensors with shapes and dtypes
but no memory), which lesson 02 uses to trace a 65B training step on a laptop. These stand-ins hold
exactly the tensors bitsandbytes holds, with the same shapes and dtypes, and allocate what its
kernels allocate:

- ``NF4Linear``: a frozen linear layer stored as ``bitsandbytes.nn.Linear4bit`` stores it (packed
  4-bit codes, blockwise absmax, optionally double-quantized). Forward and backward dequantize the
  weight to the input's dtype on the fly and do not keep it, as ``bitsandbytes.MatMul4Bit`` does.
- ``AdamW8bitState``: the state of ``bitsandbytes.optim.AdamW8bit`` (uint8 codes and a float32
  absmax per 256 values for both moments), allocated at the first step.

Importing this module registers two torch operators, ``qlora_lessons::dequantize_nf4`` and
``qlora_lessons::dequantize_absmax``, each with a fake version that allocates only its output, as
bitsandbytes' dequantization kernels do.

Left out: FP4 (same bytes as NF4) and the quantizer itself (lesson 05 builds it; here the values
are loaded from bitsandbytes with ``NF4Linear.from_quant_state`` or left at zero, since a memory
trace needs shapes, not values).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# The NF4 code: bitsandbytes.functional.get_4bit_type("nf4") (built by create_normal_map(0.9677083)).
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)
ABSMAX_BLOCKSIZE = 256  # double quantization: one float32 absmax per 256 first-level constants (bitsandbytes)
OPTIMIZER_BLOCKSIZE = 256  # 8-bit optimizer state: one float32 absmax per 256 values (bitsandbytes)
MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit optimizer state (bitsandbytes Optimizer2State.min_8bit_size)
_CHUNK_BLOCKS = 2**14  # real dequantization works on chunks of this many blocks, to bound its temporaries


@torch.library.custom_op("qlora_lessons::dequantize_nf4", mutates_args=())
def _dequantize_nf4(packed: Tensor, absmax: Tensor, code: Tensor, rows: int, cols: int, blocksize: int,
                    dtype: torch.dtype) -> Tensor:
    """W[i] = code[q[i]] * absmax[i // blocksize], written into a fresh (rows, cols) tensor of ``dtype``."""
    n = rows * cols
    out = torch.empty(n, dtype=dtype, device=packed.device)
    flat = packed.reshape(-1)
    step = blocksize * _CHUNK_BLOCKS  # a multiple of the blocksize, and even
    for start in range(0, n, step):
        stop = min(n, start + step)
        pairs = flat[start // 2:(stop + 1) // 2]  # (m,) bytes holding two codes each
        q = torch.stack((pairs >> 4, pairs & 15), dim=1).reshape(-1)[:stop - start]  # (stop - start,); high first
        scale = absmax[start // blocksize:math.ceil(stop / blocksize)].repeat_interleave(blocksize)  # (>= stop-start,)
        out[start:stop] = (code[q.long()] * scale[:stop - start]).to(dtype)  # float32 product, as bitsandbytes
    return out.reshape(rows, cols)


@_dequantize_nf4.register_fake
def _(packed, absmax, code, rows, cols, blocksize, dtype):
    # bitsandbytes' dequantize kernel writes the output directly: nothing else is allocated.
    return packed.new_empty((rows, cols), dtype=dtype)


@torch.library.custom_op("qlora_lessons::dequantize_absmax", mutates_args=())
def _dequantize_absmax(codes: Tensor, absmax2: Tensor, code: Tensor) -> Tensor:
    """absmax[i] = code[codes[i]] * absmax2[i // 256] in float32 (the offset is added by the caller)."""
    scale = absmax2.repeat_interleave(ABSMAX_BLOCKSIZE)[:codes.numel()]
    return code[codes.long()] * scale


@_dequantize_absmax.register_fake
def _(codes, absmax2, code):
    return codes.new_empty(codes.shape, dtype=torch.float32)


class _NF4Matmul(torch.autograd.Function):
    """y = x W^T with W dequantized in forward and again in backward; W itself is never saved."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return nn.functional.linear(x, layer.dequantize(x.dtype))  # (B, T, out); W (out, in) is freed here

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        # dL/dx = dL/dy W, as bitsandbytes.autograd.MatMul4Bit.backward; W is frozen, so no dL/dW.
        return grad_output @ ctx.layer.dequantize(grad_output.dtype), None


class NF4Linear(nn.Module):
    """A frozen linear layer holding the tensors ``bitsandbytes.nn.Linear4bit`` holds for an NF4 weight.

    Storage, for W of shape (out, in) with n = out * in and blocks = ceil(n / blocksize):
    ``weight`` uint8 ((n + 1) // 2, 1), two 4-bit codes per byte (first in the high nibble);
    ``code`` float32 (16,), the NF4 values; without double quantization ``absmax`` float32 (blocks,);
    with it ``absmax`` uint8 (blocks,), ``absmax2`` float32 (ceil(blocks / 256),), ``absmax_code``
    float32 (256,) and ``offset`` float32 (), so that absmax = absmax_code[absmax] * absmax2 + offset.
    Bytes per weight: 0.5 + 4 / blocksize, or 0.5 + 1 / blocksize + 4 / (256 * blocksize).

    Shapes: x (..., in) -> y (..., out), in x's dtype.
    Example: ``NF4Linear(4096, 4096).weight.shape -> (8388608, 1)`` (16,777,216 codes, half a byte each).
    """

    code: Tensor  # buffers, registered in __init__ (declared here so that a type checker knows them as tensors)
    absmax: Tensor
    absmax2: Tensor
    absmax_code: Tensor
    offset: Tensor

    def __init__(self, in_features: int, out_features: int, *, blocksize: int = 64, double_quant: bool = True,
                 device: torch.device | str | None = None, bias_dtype: torch.dtype | None = None,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"blocksize must be a power of two from 32 to 4096 (bitsandbytes), got {blocksize!r}")
        self.in_features, self.out_features, self.blocksize = in_features, out_features, blocksize
        self.double_quant = bool(double_quant)
        self.compute_dtype = compute_dtype  # bnb_4bit_compute_dtype: an input of another dtype is cast to it and back
        n = in_features * out_features
        blocks = math.ceil(n / blocksize)
        self.weight = nn.Parameter(torch.zeros(((n + 1) // 2, 1), dtype=torch.uint8, device=device),
                                   requires_grad=False)
        self.register_buffer("code", torch.tensor(NF4_CODE, dtype=torch.float32, device=device))
        if self.double_quant:
            self.register_buffer("absmax", torch.zeros(blocks, dtype=torch.uint8, device=device))
            self.register_buffer("absmax2", torch.zeros(math.ceil(blocks / ABSMAX_BLOCKSIZE), device=device))
            self.register_buffer("absmax_code", torch.zeros(256, device=device))
            self.register_buffer("offset", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(blocks, device=device))
        # a bias stays in its own dtype, frozen, as in bitsandbytes.nn.Linear4bit (Qwen2's q/k/v, OPT, GPT-2)
        self.bias = None if bias_dtype is None else nn.Parameter(
            torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)

    @classmethod
    def from_quant_state(cls, packed: Tensor, quant_state) -> NF4Linear:
        """The layer holding bitsandbytes' ``quantize_4bit(W, quant_type="nf4")`` result (``packed, quant_state``)."""
        if quant_state.quant_type != "nf4" or len(quant_state.shape) != 2:
            raise ValueError(f"quant_state must describe a 2-D NF4 weight, got {quant_state.quant_type} "
                             f"of shape {tuple(quant_state.shape)}")
        out_features, in_features = quant_state.shape
        layer = cls(in_features, out_features, blocksize=quant_state.blocksize, double_quant=quant_state.nested,
                    device=packed.device)
        with torch.no_grad():
            layer.weight.copy_(packed.reshape(layer.weight.shape))
            layer.code.copy_(quant_state.code)
            layer.absmax.copy_(quant_state.absmax)
            if quant_state.nested:
                layer.absmax2.copy_(quant_state.state2.absmax)
                layer.absmax_code.copy_(quant_state.state2.code)
                layer.offset.copy_(quant_state.offset)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W (out, in) in ``dtype``: code[q] * absmax per block, absmax itself dequantized first if nested."""
        absmax = self.absmax
        if self.double_quant:  # as bitsandbytes.functional.dequantize_4bit: 8-bit codes -> float32, then + offset
            absmax = torch.ops.qlora_lessons.dequantize_absmax(self.absmax, self.absmax2, self.absmax_code)
            absmax += self.offset
        return torch.ops.qlora_lessons.dequantize_nf4(self.weight, absmax, self.code, self.out_features,
                                                      self.in_features, self.blocksize, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.compute_dtype is not None and x.dtype != self.compute_dtype:  # as Linear4bit: compute, cast back
            return self.forward(x.to(self.compute_dtype)).to(x.dtype)
        y = _NF4Matmul.apply(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocksize={self.blocksize}, "
                f"double_quant={self.double_quant}")


class AdamW8bitState(torch.optim.Optimizer):
    """The optimizer state of ``bitsandbytes.optim.AdamW8bit``, allocated at the first ``step()``.

    Per parameter of n values: for n >= 4096, two uint8 (n,) moments and two float32 absmax
    (ceil(n / 256),), i.e. 2 + 8 / 256 bytes per value; smaller tensors keep two float32 moments
    (8 bytes per value). bitsandbytes updates this state and the parameter in one fused kernel that
    allocates nothing else, so ``step()`` allocates the state and leaves the values alone: it is a
    stand-in for memory traces, not an optimizer to train with (use bitsandbytes for that).

    Shapes: state of a (out, in) parameter: state1, state2 (out, in) uint8; absmax1, absmax2 (blocks,).
    Example: a (4096, 4096) parameter gets 2 * 16,777,216 + 2 * 4 * 65,536 = 34,078,720 bytes of state.
    """

    def __init__(self, params, lr: float = 1e-3, optim_bits: int = 8) -> None:
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32 (bitsandbytes), got {optim_bits!r}")
        super().__init__(params, {"lr": lr})
        self.optim_bits = optim_bits  # 32: bitsandbytes' AdamW32bit, two float32 moments for every tensor

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p in self.state:
                    continue
                state = self.state[p]
                state["step"] = 0
                if p.numel() < MIN_8BIT_SIZE or self.optim_bits == 32:
                    state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                    state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                else:
                    blocks = math.ceil(p.numel() / OPTIMIZER_BLOCKSIZE)
                    state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                    state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                    state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                    state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        return None
