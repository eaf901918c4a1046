"""qlora_lessons.memory_standins: NF4Linear and AdamW8bitState hold and compute what bitsandbytes does."""

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons import AdamW8bitState, NF4Linear, bytes_per_param


def _quantized(out, inp, blocksize, double_quant, seed=0):
    weight = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))
    packed, state = bnbf.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)
    return packed, state


# Shapes avoid bitsandbytes' CPU defect (see the course notes): a last dimension that is a multiple of 16 but
# not of the blocksize dequantizes wrongly on AVX-512 machines.
@pytest.mark.parametrize("shape", [(8, 128), (3, 7), (300, 256), (5, 9)])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_is_bit_exact_with_bitsandbytes(shape, double_quant, dtype):
    packed, state = _quantized(*shape, blocksize=64, double_quant=double_quant)
    state.dtype = dtype
    layer = NF4Linear.from_quant_state(packed, state)
    assert torch.equal(layer.dequantize(dtype), bnbf.dequantize_4bit(packed, state).reshape(shape))


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 40), blocksize=st.sampled_from([32, 64, 128]),
       double_quant=st.booleans())
def test_storage_has_the_shapes_and_dtypes_of_bitsandbytes(out, inp, blocksize, double_quant):
    packed, state = _quantized(out, inp, blocksize, double_quant)
    layer = NF4Linear(inp, out, blocksize=blocksize, double_quant=double_quant)
    expected = {"weight": packed, "absmax": state.absmax, "code": state.code}
    if double_quant:
        expected.update(absmax2=state.state2.absmax, absmax_code=state.state2.code, offset=state.offset)
    for name, reference in expected.items():
        mine = getattr(layer, name)
        assert (mine.shape, mine.dtype) == (reference.reshape(mine.shape).shape, reference.dtype), name
        assert mine.numel() == reference.numel(), name


@pytest.mark.parametrize("double_quant", [False, True])
def test_bytes_per_weight_are_the_papers(double_quant):
    layer = NF4Linear(4096, 4096, double_quant=double_quant)
    tables = 4 * (16 + 256 * double_quant)  # the NF4 and 8-bit code tables, the same for every layer
    stored = sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()]) - tables
    assert stored / 4096**2 == pytest.approx(
        bytes_per_param("nf4", quant_constants=True, double_quant=double_quant), rel=1e-6)


def test_forward_and_backward_match_a_dense_layer_and_keep_no_weight():
    packed, state = _quantized(48, 64, 64, True)
    layer = NF4Linear.from_quant_state(packed, state)
    x = torch.randn(2, 5, 64, requires_grad=True)
    dense = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = layer(x)
    reference = torch.nn.functional.linear(dense, layer.dequantize())
    assert torch.allclose(y, reference)
    y.sum().backward()
    reference.sum().backward()
    assert torch.allclose(x.grad, dense.grad)
    assert 48 * 64 not in saved  # the dequantized weight is made again in backward, not kept


def test_rejects_what_bitsandbytes_does_not_store():
    with pytest.raises(ValueError, match="blocksize"):
        NF4Linear(8, 8, blocksize=48)
    with pytest.raises(ValueError, match="in_features"):
        NF4Linear(0, 8)
    packed, state = bnbf.quantize_4bit(torch.randn(8, 8), quant_type="fp4")
    with pytest.raises(ValueError, match="NF4"):
        NF4Linear.from_quant_state(packed, state)


def test_8bit_state_is_the_state_of_bitsandbytes_adamw8bit():
    shapes = [(64, 100), (10,), (4096,), (3, 5000)]  # below and above bitsandbytes' 4096-value threshold
    mine = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    for p, q in zip(mine, theirs, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    stand_in, reference = AdamW8bitState(mine), bnb.optim.AdamW8bit(theirs)
    stand_in.step()
    reference.step()
    for p, q in zip(mine, theirs, strict=True):
        ours = {k: (v.shape, v.dtype) for k, v in stand_in.state[p].items() if isinstance(v, torch.Tensor)}
        real = {k: (v.shape, v.dtype) for k, v in reference.state[q].items()
                if isinstance(v, torch.Tensor) and not k.startswith("qmap")}  # qmaps: two 256-value maps, shared
        assert ours == real
