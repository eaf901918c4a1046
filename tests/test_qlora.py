"""qlora_lessons.qlora: the from-scratch QLoRA layer against bitsandbytes' Linear4bit + peft's LoRA.

The reference is built from the SAME packed 4-bit weight (``to_linear4bit``) with the same A and B, so any
difference comes from the computation, not from quantization. Both compute F.linear(x, dequantized W, b)
and then peft's LoRA branch, so on the same machine the numbers agree to the last bit; the tests assert
that (tolerance 0) and, separately, that both are within a float32 / bfloat16 rounding bound of a
float64 computation of the same equation.

Shapes: in_features is kept a multiple of 64 so that bitsandbytes' CPU dequantizer is not hit by its
AVX-512 defect (rows whose length is a multiple of 16 but not of the blocksize; see tests/test_nf4.py).
"""

from __future__ import annotations

import logging

import peft
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from qlora_lessons.lora import add_lora
from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit
from qlora_lessons.nf4_bitsandbytes import to_linear4bit
from qlora_lessons.qlora import Dequantize4bitLinear, QLoRALinear, prepare_qlora

from tiny_models import tiny_llama

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
U32, U16 = 2.0**-24, 2.0**-8  # unit roundoff of float32 and of bfloat16 (8 significant bits: 2^-8)


@pytest.fixture(autouse=True, scope="module")
def eager_bitsandbytes():
    """bitsandbytes wraps some CPU fallbacks in torch.compile; run them eagerly to keep this file fast."""
    with torch._dynamo.config.patch(disable=True):
        yield


def trained_layer(in_features=128, out_features=192, r=4, lora_alpha=8, bias=True, compute_dtype=torch.float32, seed=0):
    """A QLoRALinear with a random (trained-looking) B, so that the LoRA branch contributes."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=generator) * 0.1)
    layer = QLoRALinear.from_linear(linear, r=r, lora_alpha=lora_alpha, compute_dtype=compute_dtype)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(out_features, r, generator=generator) * 0.1)
    return layer


def bitsandbytes_peft(layer: QLoRALinear) -> nn.Module:
    """bitsandbytes Linear4bit on the layer's own packed weight, wrapped by peft with the same A and B."""
    holder = nn.Module()
    holder.is_loaded_in_4bit = True  # what transformers sets; peft then picks its bitsandbytes LoRA layer
    bias = None if layer.bias is None else layer.bias.clone()
    holder.proj = to_linear4bit(layer.weight_4bit, layer.quant_state, bias=bias, compute_dtype=layer.compute_dtype)
    peft.inject_adapter_in_model(peft.LoraConfig(r=layer.r, lora_alpha=layer.alpha, target_modules=["proj"]), holder)
    reference = holder.proj
    assert isinstance(reference, peft.tuners.lora.bnb.Linear4bit)
    for ours, theirs in ((layer.lora_A, reference.lora_A["default"].weight),
                         (layer.lora_B, reference.lora_B["default"].weight)):
        theirs.data = ours.detach().clone()  # same values and dtype
    return reference


def run(module: nn.Module, x: torch.Tensor, grad_output: torch.Tensor):
    """Output, and the gradients of A, B and x, for one backward of sum(y * grad_output)."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (y * grad_output).sum().backward()
    a, b = (module.lora_A, module.lora_B) if isinstance(module, QLoRALinear) else (
        module.lora_A["default"].weight, module.lora_B["default"].weight)
    return y.detach(), a.grad.clone(), b.grad.clone(), x.grad.clone()


def float64_reference(layer: QLoRALinear, x: torch.Tensor, grad_output: torch.Tensor):
    """The same equation in float64 from the dequantized W: (value, sum of |terms|) for y, dL/dA, dL/dB, dL/dx."""
    w = dequantize_4bit(layer.weight_4bit, layer.quant_state).double()  # (out, in)
    a, b = layer.lora_A.detach().double(), layer.lora_B.detach().double()  # (r, in), (out, r)
    bias = torch.zeros(layer.out_features, dtype=torch.float64) if layer.bias is None else layer.bias.double()
    x, g, s = x.double().reshape(-1, w.shape[1]), grad_output.double().reshape(-1, w.shape[0]), layer.scaling

    def terms(w, a, b, bias, x, g):  # (N, in) rows of x, (N, out) rows of dL/dy
        return (x @ w.T + bias + s * (x @ a.T) @ b.T,  # y (N, out)
                s * (g @ b).T @ x,  # dL/dA (r, in)
                s * g.T @ (x @ a.T),  # dL/dB (out, r)
                g @ w + s * (g @ b) @ a)  # dL/dx (N, in)

    exact = terms(w, a, b, bias, x, g)
    size = terms(w.abs(), a.abs(), b.abs(), bias.abs(), x.abs(), g.abs())  # the same sums of |terms|
    return list(zip(exact, size))


X = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1))
G = torch.randn(3, 5, 192, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_linear4bit_plus_peft_on_the_same_packed_weight(compute_dtype, bias):
    # Tolerance 0: both sides dequantize the same bytes to the same floats and run the same F.linear and
    # peft's LoRA order of operations (result + (B (A x)) * scaling cast to the input dtype).
    layer = trained_layer(bias=bias, compute_dtype=compute_dtype)
    ours, theirs = run(layer, X, G), run(bitsandbytes_peft(layer), X, G)
    for name, a, b in zip(("y", "dL/dA", "dL/dB", "dL/dx"), ours, theirs):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} differs from bitsandbytes + peft")
    base_alone = to_linear4bit(layer.weight_4bit, layer.quant_state, layer.bias, compute_dtype)(X)
    assert (ours[0] - base_alone).abs().max() > 1e-2  # the LoRA branch contributes: the check covers it


def test_float32_compute_is_within_float32_rounding_of_float64():
    # Bound: a sum of k products computed in float32 is within k * u32 * sum|terms| of the exact value
    # (Higham, "Accuracy and Stability of Numerical Algorithms", section 3.1); k = in + out + N + r + 2 is
    # longer than every chain of roundings here (the base sum, the LoRA chain, the sums over the N rows in
    # the gradients). The measured errors use about 1% of it; it is not vacuous: bfloat16 compute breaks it.
    layer = trained_layer(compute_dtype=torch.float32)
    k = layer.in_features + layer.out_features + X[..., 0].numel() + layer.r + 2
    reference = float64_reference(layer, X, G)
    for got, (exact, size) in zip(run(layer, X, G), reference):
        assert ((got.double().reshape(exact.shape) - exact).abs() <= k * U32 * size).all()
    y16 = run(trained_layer(compute_dtype=torch.bfloat16), X, G)[0].double().reshape(reference[0][0].shape)
    assert not ((y16 - reference[0][0]).abs() <= k * U32 * reference[0][1]).all()


def test_bfloat16_compute_is_within_bfloat16_rounding_of_float64():
    # In bfloat16 the inputs x, W, A, B, the LoRA intermediate and the outputs are rounded (relative 2^-9,
    # half of u16, each), and the products accumulate in float32 on CPU. Six such roundings bound every
    # term: |y - y64| <= (6 * 2^-9 + k * u32) * sum|terms|. Measured: about 10% of the bound.
    layer = trained_layer(compute_dtype=torch.bfloat16)
    k = layer.in_features + layer.r + 2
    exact, size = float64_reference(layer, X, G)[0]
    error = (run(layer, X, G)[0].double().reshape(exact.shape) - exact).abs()
    assert (error <= (6 * U16 / 2 + k * U32) * size).all()
    assert (error > k * U32 * size).any()  # and visibly coarser than float32 would be


def test_backward_keeps_the_packed_weight_not_the_dequantized_one():
    layer = trained_layer(in_features=256, out_features=512, compute_dtype=torch.bfloat16)
    n = layer.in_features * layer.out_features
    saved: list[torch.Tensor] = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(torch.randn(4, 256, requires_grad=True))
    full = [t for t in saved if t.is_floating_point() and t.numel() >= n]
    assert not full, f"a dequantized weight was saved for backward: {[tuple(t.shape) for t in full]}"
    assert any(t.dtype == torch.uint8 and t.data_ptr() == layer.weight_4bit.data_ptr() for t in saved)
    assert sum(t.numel() * t.element_size() for t in saved) < n  # less than one byte per weight in all
    y.sum().backward()  # and backward still works from what was saved

    saved.clear()  # the control: the obvious implementation does keep W (out, in) for backward
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        w = dequantize_4bit(layer.weight_4bit, layer.quant_state).to(torch.bfloat16).requires_grad_(False)
        torch.nn.functional.linear(torch.randn(4, 256, dtype=torch.bfloat16, requires_grad=True), w)
    assert any(t.is_floating_point() and t.numel() == n for t in saved)


def test_the_stored_weight_is_half_a_byte_per_value_plus_constants():
    for in_features, out_features, double_quant in ((256, 512, True), (256, 512, False), (64, 33, True)):
        linear = nn.Linear(in_features, out_features)
        layer = QLoRALinear.from_linear(linear, r=2, lora_alpha=4, double_quant=double_quant)
        n = in_features * out_features
        _, state = quantize_4bit(linear.weight, double_quant=double_quant)
        tables = 16 * 4 + (256 * 4 if double_quant else 0)  # the NF4 levels, and the dynamic map
        assert layer.weight_4bit.numel() == (n + 1) // 2 and layer.weight_4bit.dtype == torch.uint8
        assert layer.weight_bytes == (n + 1) // 2 + state.constant_bytes - (4 if double_quant else 0) + tables
        blocks = -(-n // 64)
        constants = blocks + 4 * -(-blocks // 256) if double_quant else 4 * blocks
        assert layer.weight_bytes == (n + 1) // 2 + constants + tables
        floats = [t for t in layer.state_dict().values() if t.is_floating_point() and t.numel() >= n]
        assert not floats, "a full-precision copy of W0 is stored"


def test_zero_initialised_adapter_is_the_4bit_layer_alone():
    linear = nn.Linear(128, 64)
    layer = QLoRALinear.from_linear(linear, r=4, lora_alpha=8, compute_dtype=torch.float32)
    x = torch.randn(7, 128)
    expected = x @ dequantize_4bit(layer.weight_4bit, layer.quant_state).T + linear.bias.detach()
    bound = float(4 * 128 * U32 * (x.abs() @ linear.weight.detach().abs().T).max())
    torch.testing.assert_close(layer(x).detach(), expected, rtol=0, atol=bound)
    assert torch.equal(layer.lora_B, torch.zeros(64, 4))
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["adapter.lora_A", "adapter.lora_B"]


@settings(max_examples=15, deadline=None)
@given(in_features=st.integers(1, 40), out_features=st.integers(1, 40), batch=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_gradient_of_x_uses_the_same_dequantized_weight(in_features, out_features, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=generator)
    packed, state = quantize_4bit(w, double_quant=True)
    x = torch.randn(batch, in_features, generator=generator, requires_grad=True)
    g = torch.randn(batch, out_features, generator=generator)
    y = Dequantize4bitLinear.apply(x, packed, state, None)
    y.backward(g)
    w4 = dequantize_4bit(packed, state)
    assert torch.equal(y, torch.nn.functional.linear(x.detach(), w4))
    assert torch.equal(x.grad, g @ w4)


def test_prepare_qlora_adapts_the_layers_peft_adapts_and_freezes_the_rest():
    model = prepare_qlora(tiny_llama(), r=4, lora_alpha=8)
    ours = {name for name, module in model.named_modules() if isinstance(module, QLoRALinear)}
    reference = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    theirs = {name.removeprefix("base_model.model.") for name, module in reference.named_modules()
              if isinstance(module, peft.tuners.lora.LoraLayer)}
    assert ours == theirs and "lm_head" not in ours and len(ours) == 2 * 7
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    assert sum(trainable.values()) == sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert sum(trainable.values()) == 2 * 4 * (4 * (64 + 64) + 2 * (64 + 128) + (128 + 64))  # r (in + out)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = model(ids).logits
    assert (logits - tiny_llama()(ids).logits).abs().max() < 0.1  # 4-bit rounding only: B starts at zero
    logits.sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if name.endswith("lora_A"))
    assert model.lm_head.weight.grad is None and not model.lm_head.weight.requires_grad


def test_prepare_qlora_on_named_targets():
    model = prepare_qlora(tiny_llama(), r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    assert sorted(name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, QLoRALinear)) == [
        "q_proj", "q_proj", "v_proj", "v_proj"]
    with pytest.raises(ValueError, match="matches no linear layer"):
        prepare_qlora(model, r=2, lora_alpha=4, target_modules=["q_proj"])  # already 4-bit
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        prepare_qlora(add_lora(tiny_llama(), "all-linear", r=2, lora_alpha=4), r=2, lora_alpha=4)  # LoRALinear layers


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(linear=torch.zeros(4, 4)), TypeError, "linear must be a torch.nn.Linear"),
    (dict(r=0), ValueError, "r must be >= 1"),
    (dict(r=2.0), TypeError, "r must be an int"),
    (dict(r=65), ValueError, "r must be <= min"),
    (dict(lora_alpha=-1), ValueError, "alpha must be a positive number"),
    (dict(lora_dropout=1.0), ValueError, "dropout must be a probability"),
    (dict(blocksize=63), ValueError, "blocksize must be one of"),
    (dict(compute_dtype=torch.int8), TypeError, "compute_dtype must be one of"),
])
def test_from_linear_rejects_bad_arguments(kwargs, error, match):
    arguments = dict(linear=nn.Linear(64, 128), r=4, lora_alpha=8)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        QLoRALinear.from_linear(**arguments)


def test_constructor_and_prepare_reject_bad_arguments():
    packed, state = quantize_4bit(torch.randn(8, 16))
    with pytest.raises(ValueError, match="packed has 63 bytes"):
        QLoRALinear(packed[:63], state, r=2, lora_alpha=4)
    with pytest.raises(TypeError, match="packed must be a uint8"):
        QLoRALinear(packed.float(), state, r=2, lora_alpha=4)
    with pytest.raises(ValueError, match="bias must have shape"):
        QLoRALinear(packed, state, bias=torch.zeros(16), r=2, lora_alpha=4)
    _, state_1d = quantize_4bit(torch.randn(128))
    with pytest.raises(TypeError, match="2-D"):
        QLoRALinear(packed, state_1d, r=2, lora_alpha=4)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prepare_qlora("model", r=2, lora_alpha=4)
    with pytest.raises(ValueError, match="matches no linear layer"):
        prepare_qlora(tiny_llama(), r=2, lora_alpha=4, target_modules=["qkv"])
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        prepare_qlora(tiny_llama(), r=2, lora_alpha=4, double_quant=1)
    model = tiny_llama()
    with pytest.raises(ValueError, match="r must be <= min"):
        prepare_qlora(model, r=65, lora_alpha=4)
    assert not any(isinstance(m, QLoRALinear) for m in model.modules())  # a bad call changes nothing
