"""Our 4-bit QuantState to and from bitsandbytes' ``QuantState``, and a ``bitsandbytes.nn.Linear4bit``
built from our packed weight.

The two states hold the same things under the same names (absmax, shape, dtype, blocksize, quant_type,
code, and for double quantization offset and state2), so the conversion only changes containers:
bitsandbytes keeps ``offset`` as a 0-dim float32 tensor, ``shape`` as a ``torch.Size`` and the nested
8-bit state as a second ``QuantState``; its packed weight has shape ((n + 1) // 2, 1).

This module comes after ``nf4`` and ``double_quant`` in lesson order (it uses both); lesson 08 uses it
to put our own quantized weights into the real QLoRA stack. bitsandbytes supports NF4 and FP4 only.
"""

from __future__ import annotations

import torch

from qlora_lessons.double_quant import Blockwise8bitState
from qlora_lessons.nf4 import QuantState


def to_bitsandbytes(state: QuantState):
    """The same state as a ``bitsandbytes.functional.QuantState`` (NF4 or FP4).

    Example: ``bnb.functional.dequantize_4bit(packed.view(-1, 1), to_bitsandbytes(state))`` equals
    ``dequantize_4bit(packed, state)`` (see the tests for the one CPU defect of bitsandbytes).
    """
    from bitsandbytes.functional import QuantState as BnbQuantState

    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a qlora_lessons.nf4.QuantState, got {type(state).__name__}")
    if state.quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bitsandbytes stores only 'nf4' and 'fp4', not quant_type={state.quant_type!r}")
    nested = None
    if state.state2 is not None:
        nested = BnbQuantState(absmax=state.state2.absmax, code=state.state2.code,
                               blocksize=state.state2.blocksize, dtype=torch.float32)
    return BnbQuantState(absmax=state.absmax, shape=torch.Size(state.shape), code=state.code,
                         blocksize=state.blocksize, quant_type=state.quant_type, dtype=state.dtype,
                         offset=None if nested is None else torch.tensor(state.offset, dtype=torch.float32),
                         state2=nested)


def from_bitsandbytes(bnb_state) -> QuantState:
    """Our ``QuantState`` from a bitsandbytes one (as returned by ``bitsandbytes.functional.quantize_4bit``).

    Example: ``packed, s = bnb.functional.quantize_4bit(w, quant_type="nf4")``;
    ``dequantize_4bit(packed.view(-1), from_bitsandbytes(s))`` rebuilds w's 4-bit approximation.
    """
    for name in ("absmax", "shape", "code", "blocksize", "quant_type", "dtype", "state2"):
        if not hasattr(bnb_state, name):
            raise TypeError(f"bnb_state must be a bitsandbytes QuantState (it has no {name!r})")
    if bnb_state.quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bnb_state.quant_type must be 'nf4' or 'fp4', got {bnb_state.quant_type!r}")
    state2, offset = None, None
    if bnb_state.state2 is not None:
        nested = bnb_state.state2
        state2 = Blockwise8bitState(nested.absmax, nested.code, nested.blocksize, (bnb_state.absmax.numel(),),
                                    torch.float32)
        offset = float(bnb_state.offset)
    return QuantState(bnb_state.absmax, bnb_state.blocksize, tuple(bnb_state.shape), bnb_state.dtype,
                      bnb_state.quant_type, bnb_state.code, offset, state2)


def to_linear4bit(packed: torch.Tensor, state: QuantState, bias: torch.Tensor | None = None,
                  compute_dtype: torch.dtype | None = None):
    """A ``bitsandbytes.nn.Linear4bit`` whose weight is our packed 4-bit weight W (out, in).

    Equation: y = x W^T + b with W = dequantize_4bit(packed, state), computed by bitsandbytes.
    Shapes: packed ((out * in + 1) // 2,), state.shape (out, in), bias (out,) -> Linear4bit(in, out).
    Example: ``to_linear4bit(*quantize_4bit(W, double_quant=True))(x)`` ~= ``x @ dequantize_4bit(...).T``.
    """
    import bitsandbytes as bnb

    if len(state.shape) != 2:
        raise ValueError(f"a linear weight has shape (out, in), got state.shape {state.shape}")
    out_features, in_features = state.shape
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=state.nested, quant_type=state.quant_type, device="meta")
    bnb_state = to_bitsandbytes(state)
    layer.weight = bnb.nn.Params4bit(packed.reshape(-1, 1), requires_grad=False, quant_state=bnb_state,
                                     blocksize=state.blocksize, compress_statistics=state.nested,
                                     quant_type=state.quant_type, bnb_quantized=True, module=layer)
    layer.quant_state = bnb_state
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    return layer
