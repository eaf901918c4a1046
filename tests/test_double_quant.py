"""Tests of qlora_lessons.double_quant (and double_quant_plots).

The reference is bitsandbytes 0.50: the dynamic map must be identical; with double quantization the
4-bit bytes, ``offset``, the second-level absmax and the map must be identical. bitsandbytes' CPU
8-bit quantizer looks codes up in a table instead of rounding exactly, so there the 8-bit codes are
compared by the fraction that agree (at least 99.5%), and every disagreement is checked to be
bitsandbytes' code being the farther one.
"""

from __future__ import annotations

import math

import bitsandbytes.functional as bnb
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qlora_lessons.blockwise import blockwise_absmax_scale, quantization_error
from qlora_lessons.double_quant import (
    Blockwise8bitState,
    bits_per_param,
    dequantize_absmax,
    dequantize_blockwise_8bit,
    dynamic_map,
    estimate_constants_memory,
    quantize_absmax,
    quantize_blockwise_8bit,
)
from qlora_lessons.double_quant_plots import constants_calculator, plot_constants, plot_constants_memory
from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True, scope="module")
def eager_bitsandbytes():
    """bitsandbytes wraps some CPU fallbacks in torch.compile (seconds per new shape); run them eagerly."""
    with torch._dynamo.config.patch(disable=True):
        yield


# ---------------------------------------------------------------- the dynamic map


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    ours = dynamic_map(signed)
    assert ours.shape == (256,) and ours.dtype == torch.float32
    assert torch.equal(ours, bnb.create_dynamic_map(signed))


def test_dynamic_map_is_sorted_with_zero_one_and_many_small_values():
    code = dynamic_map()
    assert torch.equal(code, code.sort().values)
    assert float(code[-1]) == 1.0 and 0.0 in code.tolist() and float(code[0]) == pytest.approx(-0.99296875)
    assert int((code.abs() < 1e-3).sum()) > 30  # the dynamic type spends many codes near zero


# ---------------------------------------------------------------- 8-bit blockwise quantization


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2000), blocksize=st.sampled_from([32, 64, 256, 2048]), log_scale=st.floats(-20, 20),
       signed=st.booleans(), seed=st.integers(0, 2**16))
@example(n=782, blocksize=64, log_scale=0.0, signed=False, seed=1)
def test_8bit_codes_are_the_nearest_level_and_round_trip_within_half_a_gap(n, blocksize, log_scale, signed, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 2.0**log_scale
    x = x if signed else x.abs()
    code = dynamic_map(signed)
    codes, state = quantize_blockwise_8bit(x, blocksize, code)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and state.absmax.numel() == math.ceil(n / blocksize)
    absmax = state.absmax.repeat_interleave(blocksize)[:n]
    # the quantizer's own scaled values: x * (1 / absmax) and x / absmax can differ in the last bit, and a value
    # that lands exactly on a midpoint then counts it or not (seed 1, n=782, blocksize 64: one value of 782)
    scaled = blockwise_absmax_scale(x, blocksize)[1]
    midpoints = (code[:-1] + code[1:]) / 2
    counted = (scaled[:, None] > midpoints[None, :]).sum(dim=1)  # midpoints strictly below, counted one by one
    assert torch.equal(codes.long(), counted)
    distance = (scaled[:, None].double() - code[None, :].double()).abs()
    assert bool((distance.gather(1, codes.long()[:, None]).squeeze(1) <= distance.min(dim=1).values + 1e-7).all())
    gap = float(code.diff().max())
    assert bool(((dequantize_blockwise_8bit(codes, state) - x).abs() <= absmax * (gap / 2 + 1e-6)).all())


def test_8bit_codes_agree_with_bitsandbytes_table_on_nearly_all_values():
    """bitsandbytes' CPU 8-bit quantizer finds codes with a lookup table; measure how often it agrees with exact
    rounding, and check that where it does not, its code is the farther one."""
    x = torch.randn(256 * 4096, generator=torch.Generator().manual_seed(7))
    ours, state = quantize_blockwise_8bit(x, 256)
    theirs, state_ref = bnb.quantize_blockwise(x, blocksize=256)
    assert torch.equal(state.absmax, state_ref.absmax)
    agree = float((ours == theirs).float().mean())
    assert agree >= 0.995, agree
    exact = x.double() / state.absmax.double().repeat_interleave(256)  # the value each code stands for
    code = dynamic_map().double()
    ours_distance, theirs_distance = (exact - code[ours.long()]).abs(), (exact - code[theirs.long()]).abs()
    assert bool((ours_distance <= theirs_distance + 1e-7).all())  # up to float32 rounding of the scaling
    assert int((ours_distance < theirs_distance - 1e-7).sum()) > 0.99 * int((ours != theirs).sum())
    assert torch.equal(dequantize_blockwise_8bit(theirs, state), bnb.dequantize_blockwise(theirs, state_ref))


def test_bitsandbytes_cpu_8bit_codes_are_a_65536_slot_table():
    """What bitsandbytes 0.50's CPU 8-bit quantizer does, reproduced exactly: slot = trunc((v + 1) / 2 * 65535 + 0.5)
    and the code stored for a slot is the level nearest the slot's centre 2 slot / 65535 - 1."""
    x = torch.randn(256 * 512, generator=torch.Generator().manual_seed(11))
    theirs, state_ref = bnb.quantize_blockwise(x, blocksize=256)
    scaled = x.view(-1, 256) * (1 / state_ref.absmax).unsqueeze(1)
    slot = (((scaled + 1) * 0.5) * 65535 + 0.5).long()
    code = dynamic_map()
    table = torch.bucketize(torch.arange(65536) * 2 / 65535 - 1, (code[:-1] + code[1:]) / 2)
    assert torch.equal(table[slot].view(-1), theirs.long())


# ---------------------------------------------------------------- double quantization against bitsandbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [32, 64, 256])
def test_double_quant_matches_bitsandbytes(dtype, blocksize):
    w = (torch.randn(1024, 777, generator=torch.Generator().manual_seed(8)) * 0.02).to(dtype)
    packed, state = quantize_4bit(w, blocksize, "nf4", double_quant=True)
    packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, packed_ref.view(-1))
    assert state.offset == float(state_ref.offset)
    assert torch.equal(state.state2.absmax, state_ref.state2.absmax)
    assert torch.equal(state.state2.code, state_ref.state2.code)
    same = state.absmax == state_ref.absmax  # the 8-bit codes of the constants
    assert float(same.float().mean()) >= 0.995
    ours, theirs = dequantize_4bit(packed, state), bnb.dequantize_4bit(packed_ref, state_ref)
    block_agrees = same.repeat_interleave(blocksize)[: w.numel()].view(w.shape)
    assert torch.equal(ours[block_agrees], theirs[block_agrees])  # where the codes agree, so do the weights
    ours_mse, theirs_mse = quantization_error(w, ours).mse, quantization_error(w, theirs).mse
    assert abs(ours_mse - theirs_mse) <= 0.002 * theirs_mse  # within bitsandbytes' own error


def test_dequantize_absmax_is_code_times_absmax2_plus_offset():
    absmax = torch.rand(1000, generator=torch.Generator().manual_seed(9)) + 0.5
    codes, offset, state2 = quantize_absmax(absmax)
    by_hand = dynamic_map()[codes.long()] * state2.absmax.repeat_interleave(256)[:1000] + torch.tensor(offset)
    assert torch.equal(dequantize_absmax(codes, offset, state2), by_hand)
    assert offset == float(absmax.mean())
    relative = ((by_hand - absmax) / absmax).abs().max()
    assert float(relative) < 0.01  # 8 bits of a centred constant: well under 1% off


def test_double_quant_adds_little_error_to_the_weights():
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(10)) * 0.02
    plain = quantization_error(w, dequantize_4bit(*quantize_4bit(w)))
    double = quantization_error(w, dequantize_4bit(*quantize_4bit(w, double_quant=True)))
    assert plain.mse < double.mse < 1.01 * plain.mse


# ---------------------------------------------------------------- what the constants cost


def test_bits_per_param_is_4_5_and_4_127():
    assert bits_per_param() == 4.5
    assert bits_per_param(double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(bits_per_param(double_quant=True) - 4, 3) == 0.127
    assert round(bits_per_param() - bits_per_param(double_quant=True), 3) == 0.373


def test_constants_memory_of_a_65b_model_saves_about_3_gb():
    n = 65 * 10**9
    plain, double = estimate_constants_memory(n), estimate_constants_memory(n, double_quant=True)
    assert plain.constant_bytes == 4 * n // 64 and plain.weight_bytes == n // 2
    assert double.constant_bytes == n // 64 + 4 * math.ceil(n / 64 / 256) + 4
    saved = plain.total_bytes - double.total_bytes
    assert 2.9e9 < saved < 3.1e9
    assert math.isclose(8 * saved / n, bits_per_param() - bits_per_param(double_quant=True), rel_tol=1e-6)
    assert "GB" in repr(double)


def test_quantize_4bit_state_counts_its_constant_bytes():
    packed, state = quantize_4bit(torch.randn(64 * 1024), double_quant=True)
    assert state.constant_bytes == 1024 + 4 * 4 + 4
    assert quantize_4bit(torch.randn(64 * 1024))[1].constant_bytes == 4 * 1024


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="blocksize"):
        quantize_blockwise_8bit(torch.randn(10), 100)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        quantize_blockwise_8bit(torch.arange(10))
    with pytest.raises(ValueError, match="empty"):
        quantize_blockwise_8bit(torch.empty(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_blockwise_8bit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="shape \\(256,\\)"):
        quantize_blockwise_8bit(torch.randn(10), code=torch.linspace(-1, 1, 16))
    with pytest.raises(ValueError, match="sorted"):
        quantize_blockwise_8bit(torch.randn(10), code=dynamic_map().flip(0))
    codes, state = quantize_blockwise_8bit(torch.randn(10), 32)
    with pytest.raises(TypeError, match="uint8"):
        dequantize_blockwise_8bit(codes.int(), state)
    with pytest.raises(ValueError, match="needs 10"):
        dequantize_blockwise_8bit(codes[:5], state)
    with pytest.raises(TypeError, match="Blockwise8bitState"):
        dequantize_blockwise_8bit(codes, state.absmax)
    with pytest.raises(TypeError, match="1-D float32"):
        quantize_absmax(torch.rand(4, 4))
    with pytest.raises(ValueError, match="n_params"):
        estimate_constants_memory(0)
    with pytest.raises(ValueError, match="blocksize2"):
        bits_per_param(double_quant=True, blocksize2=100)
    with pytest.raises(TypeError, match="signed"):
        dynamic_map("yes")
    assert isinstance(state, Blockwise8bitState) and "blocks" in repr(state)


# ---------------------------------------------------------------- pictures and the widget


def test_plots_and_calculator():
    _, state = quantize_4bit(torch.randn(64 * 600) * 0.02)
    assert len(plot_constants(state.absmax).axes) == 2
    fig = plot_constants_memory({"7B": 7 * 10**9, "65B": 65 * 10**9})
    assert len(fig.axes[0].patches) == 4
    calculator = constants_calculator(65)
    assert "4.500 -&gt; 4.127" in calculator.children[-1].value or "4.500 -> 4.127" in calculator.children[-1].value
    calculator.children[1].value = 32
    assert "5.000" in calculator.children[-1].value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to compare with bitsandbytes' CUDA kernels")
def test_double_quant_matches_bitsandbytes_on_cuda_8bit_codes_included():
    w = torch.randn(1024, 777, device="cuda") * 0.02
    packed, state = quantize_4bit(w, 64, "nf4", double_quant=True)
    packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, packed_ref.view(-1)) and torch.equal(state.absmax, state_ref.absmax)
    assert state.offset == float(state_ref.offset) and torch.equal(state.state2.absmax, state_ref.state2.absmax)
