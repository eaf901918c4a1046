"""Tests of qlora_lessons.blockwise: quantize_int / dequantize_int (the textbook absmax integer codes) and
quantization_error.

(The blockwise scaling and nearest-level search that nf4 and double_quant build on are tested, against
bitsandbytes, in tests/test_nf4.py and tests/test_double_quant.py.)
"""

from __future__ import annotations

import math

import bitsandbytes.functional as bnb
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons.blockwise import dequantize_int, quantization_error, quantize_int
from qlora_lessons.nf4 import dequantize_4bit, int4_code, quantize_4bit, unpack_4bit


def test_worked_example_and_an_all_zero_block():
    q, absmax = quantize_int(torch.tensor([0.5, -1.0, 0.25]), bits=8)
    assert q.tolist() == [64, -127, 32] and q.dtype == torch.int8 and absmax.tolist() == [1.0]  # 63.5 -> 64 (even)
    q, absmax = quantize_int(torch.tensor([0.0, 0.0, 3.5, -7.0, 1.0]), bits=4, blocksize=2)
    assert q.tolist() == [0, 0, 4, -7, 7] and absmax.tolist() == [0.0, 7.0, 1.0]  # 3.5 -> 4 (even); last block of 1
    assert dequantize_int(q, absmax, bits=4, blocksize=2).tolist() == [0.0, 0.0, 4.0, -7.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_int8_per_row_equals_bitsandbytes_vectorwise_quant(dtype):
    """LLM.int8()'s row-wise absmax quantization, as bitsandbytes computes it, is quantize_int with one block a row."""
    torch.manual_seed(0)
    w = (torch.randn(64, 300) * torch.logspace(-3, 1, 64).unsqueeze(1)).to(dtype)
    theirs, row_absmax, _ = bnb.int8_vectorwise_quant(w)
    ours, absmax = quantize_int(w, bits=8, blocksize=300)
    assert torch.equal(ours, theirs) and torch.equal(absmax, row_absmax)


def test_int4_equals_the_int4_code_of_quantize_4bit_away_from_midpoints():
    torch.manual_seed(1)
    w = torch.randn(256 * 1024)
    q, absmax = quantize_int(w, bits=4, blocksize=64)
    packed, state = quantize_4bit(w, blocksize=64, quant_type="int4")
    levels = int4_code()[unpack_4bit(packed, w.numel()).long()] * 7  # k / 7 -> k
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(q.float(), levels.round())  # no value of this sample lies on a midpoint
    w_hat = dequantize_4bit(packed, state)
    assert torch.allclose(dequantize_int(q, absmax, bits=4, blocksize=64), w_hat, rtol=1e-6, atol=0)


def test_on_an_exact_midpoint_round_goes_to_even_and_int4_to_the_lower_level():
    w = torch.tensor([1.5, 7.0]).repeat(32)  # 1.5 / 7 * 7 = 1.5 exactly: halfway between the levels 1 and 2
    q, _ = quantize_int(w, bits=4, blocksize=64)
    packed, _ = quantize_4bit(w, blocksize=64, quant_type="int4")
    assert int(q[0]) == 2 and float(int4_code()[unpack_4bit(packed)[0].long()]) * 7 == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), bits=st.integers(2, 8), blocksize=st.one_of(st.none(), st.integers(1, 200)),
       log_scale=st.floats(-20, 20), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_a_step(n, bits, blocksize, log_scale, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 2.0**log_scale
    q, absmax = quantize_int(x, bits, blocksize)
    qmax = 2 ** (bits - 1) - 1
    assert q.shape == x.shape and int(q.abs().max()) <= qmax
    assert int(q.abs().max()) == qmax  # the largest |x| of each block lands on +-qmax
    step = absmax.repeat_interleave(blocksize or n)[:n] / qmax  # (n,): the spacing of each value's levels
    error = (dequantize_int(q, absmax, bits, blocksize) - x).abs()
    assert bool((error <= step * (0.5 + 1e-5)).all())


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="bits"):
        quantize_int(torch.randn(8), bits=9)
    with pytest.raises(ValueError, match="blocksize"):
        quantize_int(torch.randn(8), blocksize=0)
    with pytest.raises(TypeError, match="float32"):
        quantize_int(torch.arange(8))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        quantize_int(torch.zeros(0))
    q, absmax = quantize_int(torch.randn(10), blocksize=4)
    with pytest.raises(ValueError, match="need 3"):
        dequantize_int(q, absmax[:2], blocksize=4)
    with pytest.raises(TypeError, match="int8"):
        dequantize_int(q.float(), absmax)
    with pytest.raises(ValueError, match="blocksize"):
        dequantize_int(q, absmax, blocksize="4")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       hat_dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_quantization_error_is_the_float64_formula_and_leaves_its_inputs_alone(n, dtype, hat_dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=generator).to(dtype)
    w_hat = (w.double() + 0.01 * torch.randn(n, generator=generator, dtype=torch.float64)).to(hat_dtype)
    w_before, w_hat_before = w.clone(), w_hat.clone()
    error = quantization_error(w, w_hat)
    diff = w.double() - w_hat.double()
    assert error.mse == float(diff.pow(2).mean()) and error.max_abs_error == float(diff.abs().max())
    assert error.snr_db == pytest.approx(10 * math.log10(float(w.double().pow(2).mean()) / error.mse), rel=1e-12)
    assert torch.equal(w, w_before) and torch.equal(w_hat, w_hat_before)
