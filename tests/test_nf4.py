"""Tests of qlora_lessons.nf4 (with nf4_kernels, nf4_bitsandbytes, nf4_plots and blockwise).

The reference is bitsandbytes 0.50 on CPU: the codes, the packed bytes and the absmax must be
identical for float32, bfloat16 and float16 inputs, every allowed blocksize, sizes that are not a
multiple of the blocksize, NF4 and FP4, and values exactly on the midpoints between levels.
"""

from __future__ import annotations

import math

import bitsandbytes.functional as bnb
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons.blockwise import BLOCKSIZES, blockwise_absmax_scale, quantization_error
from qlora_lessons.env import torch_threads
from qlora_lessons.nf4 import (
    NF4_OFFSET,
    QUANT_TYPES,
    code_for,
    dequantize_4bit,
    fp4_code,
    int4_code,
    nearest_4bit,
    nf4_code,
    pack_4bit,
    quantize_4bit,
    unpack_4bit,
)
from qlora_lessons.nf4_bitsandbytes import from_bitsandbytes, to_bitsandbytes, to_linear4bit
from qlora_lessons.nf4_kernels import CHUNK, WIDE_CHUNK, for_each_chunk
from qlora_lessons.nf4_plots import (
    code_explorer,
    explain_value,
    plot_code_comparison,
    plot_code_levels,
    plot_dequantized_vs_absmax,
    plot_value_lookup,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True, scope="module")
def eager_bitsandbytes():
    """bitsandbytes wraps some CPU fallbacks in torch.compile, which compiles for seconds per new shape;
    run them eagerly (the same computation) to keep this file fast."""
    with torch._dynamo.config.patch(disable=True):
        yield


def textbook_quantize(w: torch.Tensor, blocksize: int, quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, search, pack: the steps of lesson 05, without the lookup tables and chunks."""
    absmax, scaled = blockwise_absmax_scale(w, blocksize)
    if scaled.numel() % 2:
        scaled = torch.cat([scaled, scaled.new_zeros(1)])
    return pack_4bit(nearest_4bit(scaled, code_for(quant_type))), absmax


def max_gap(code: torch.Tensor) -> float:
    return float(code.sort().values.diff().max())


# ---------------------------------------------------------------- the codes


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_codes_equal_bitsandbytes_tables(quant_type):
    assert torch.equal(code_for(quant_type), bnb.get_4bit_type(quant_type, device="cpu"))


def test_nf4_code_is_sorted_with_exact_minus_one_zero_and_one():
    code = nf4_code()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.equal(code, code.sort().values)
    assert (code[0], code[7], code[15]) == (-1.0, 0.0, 1.0)
    assert int((code > 0).sum()) == 8 and int((code < 0).sum()) == 7


def test_nf4_offset_is_the_mean_of_two_tail_probabilities_cut_to_seven_decimals():
    exact = (1 - 1 / 30 + 1 - 1 / 32) / 2
    assert abs(NF4_OFFSET - exact) < 1e-7 and NF4_OFFSET == round(exact, 7)


def test_fp4_and_int4_codes_have_the_documented_levels():
    assert sorted((fp4_code() * 12).abs().tolist()) == sorted([0, 0.0625, 2, 3, 4, 6, 8, 12] * 2)
    # bitsandbytes' get_4bit_type("int4") lists these integers but fails to divide them (an int64 tensor);
    # the intended table is the list divided by 7
    listed = [7, 6, 5, 4, 3, 2, 1, 0, -0, -1, -2, -3, -4, -5, -6, -7]
    assert torch.equal(int4_code(), torch.tensor(listed, dtype=torch.float32) / 7)


# ---------------------------------------------------------------- byte for byte against bitsandbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_matches_bitsandbytes_every_blocksize_and_odd_sizes(quant_type, dtype):
    torch.manual_seed(0)
    for blocksize in BLOCKSIZES:
        for shape in [(1,), (3,), (blocksize - 1,), (blocksize + 1,), (2 * blocksize + 17,), (3, blocksize // 2 + 5)]:
            w = (torch.randn(shape) * 0.05).to(dtype)
            packed, state = quantize_4bit(w, blocksize, quant_type)
            packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
            assert torch.equal(packed, packed_ref.view(-1)), (blocksize, shape)
            assert torch.equal(state.absmax, state_ref.absmax), (blocksize, shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_matches_bitsandbytes_across_many_chunks(dtype):
    torch.manual_seed(1)
    w = torch.randn(3 * CHUNK + 101).to(dtype)  # several chunks, spread over threads, and a partial block
    packed, state = quantize_4bit(w, 64, "nf4")
    packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, packed_ref.view(-1)) and torch.equal(state.absmax, state_ref.absmax)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_across_many_chunks_is_code_times_absmax_on_any_number_of_threads(dtype, threads):
    """The chunked, threaded dequantization gives exactly the textbook w = code[q] * absmax, cast once."""
    torch.manual_seed(4)
    w = torch.randn(3 * WIDE_CHUNK + 4 * 64 + 37).to(dtype)  # 3 chunks of 16-bit outputs (24 of float32) and more
    packed, state = quantize_4bit(w, 64, "nf4")
    q = unpack_4bit(packed, w.numel()).long()
    textbook = (state.code[q] * state.absmax.repeat_interleave(64)[: w.numel()]).to(dtype)
    with torch_threads(threads):
        assert torch.equal(dequantize_4bit(packed, state), textbook)
        assert torch.equal(quantize_4bit(w, 64, "nf4")[0], packed)


def test_for_each_chunk_visits_every_chunk_once():
    seen = []
    for threads in (1, 2, 3, 8):
        with torch_threads(threads):
            for n_chunks in (1, 2, 5, 7):
                seen.clear()
                for_each_chunk(seen.append, n_chunks * CHUNK - 3)
                assert sorted(seen) == [i * CHUNK for i in range(n_chunks)]
                assert torch.get_num_threads() == threads  # set back after the workers' one-thread spell
            seen.clear()
            for_each_chunk(seen.append, 3 * WIDE_CHUNK, WIDE_CHUNK)
            assert sorted(seen) == [0, WIDE_CHUNK, 2 * WIDE_CHUNK]


def test_for_each_chunk_raises_the_error_of_a_chunk_and_keeps_the_thread_count():
    def work(start: int) -> None:
        if start == 2 * CHUNK:
            raise ValueError("chunk 2 failed")

    with torch_threads(2):
        with pytest.raises(ValueError, match="chunk 2 failed"):
            for_each_chunk(work, 4 * CHUNK)
        assert torch.get_num_threads() == 2


def test_a_parameter_and_a_transposed_view_quantize_like_bitsandbytes():
    W = torch.nn.Parameter(torch.randn(CHUNK // 64, 160))  # requires grad, several chunks
    for w in (W, W.t()):  # a transposed view is quantized in its logical (row-major) order
        packed, state = quantize_4bit(w)
        packed_ref, state_ref = bnb.quantize_4bit(w.detach(), blocksize=64, quant_type="nf4")
        assert torch.equal(packed, packed_ref.view(-1)) and torch.equal(state.absmax, state_ref.absmax)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_values_exactly_on_midpoints_go_to_the_lower_level_as_in_bitsandbytes(quant_type):
    code = code_for(quant_type)
    levels = code.sort().values
    midpoints = (levels[:-1] + levels[1:]) / 2
    up, down = torch.nextafter(midpoints, torch.tensor(2.0)), torch.nextafter(midpoints, torch.tensor(-2.0))
    row = torch.cat([torch.tensor([1.0]), midpoints, up, down])  # 46 values; the 1.0 makes absmax exactly 1
    for scale in (1.0, 2.0, 4.0):  # powers of two scale exactly (even the subnormal next to 0), values stay put
        w = torch.cat([row, torch.zeros(64 - row.numel()), row]) * scale  # a full block, then a partial one
        packed, _ = quantize_4bit(w, 64, quant_type)
        packed_ref, _ = bnb.quantize_4bit(w, blocksize=64, quant_type=quant_type)
        assert torch.equal(packed, packed_ref.view(-1))
        q = unpack_4bit(packed, w.numel())
        rank = torch.argsort(torch.argsort(code, stable=True))[q.long()]  # position of each level in sorted order
        assert torch.equal(rank[1:16], torch.arange(15))  # on midpoint j: the lower level j
        assert torch.equal(rank[16:31], torch.arange(1, 16))  # just above: the upper level


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 700), blocksize=st.sampled_from(BLOCKSIZES[:4]), quant_type=st.sampled_from(QUANT_TYPES),
       log_scale=st.floats(-30, 30), zero_block=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_path_equals_textbook_steps(n, blocksize, quant_type, log_scale, zero_block, seed):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 2.0**log_scale
    if zero_block:
        w[:blocksize] = 0.0
    packed, state = quantize_4bit(w, blocksize, quant_type)
    packed_ref, absmax_ref = textbook_quantize(w, blocksize, quant_type)
    assert torch.equal(packed, packed_ref) and torch.equal(state.absmax, absmax_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_matches_bitsandbytes_both_ways(quant_type, dtype):
    torch.manual_seed(2)
    # shapes outside the CPU defect below: 1-D, last dimension not a multiple of 16 or a multiple of the blocksize,
    # or blocksize >= 2048
    for shape, blocksize in [((1000,), 64), ((33, 70), 64), ((3, 4097), 128), ((7, 100), 2048), ((5, 80), 4096),
                             ((4, 256), 64), ((2, 3, 50), 32)]:
        w = torch.randn(shape).to(dtype)
        packed, state = quantize_4bit(w, blocksize, quant_type)
        ours = dequantize_4bit(packed, state)
        assert ours.shape == shape and ours.dtype == dtype
        theirs = bnb.dequantize_4bit(packed.view(-1, 1), to_bitsandbytes(state)).reshape(shape)
        assert torch.equal(ours, theirs), (shape, blocksize)
        packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
        assert torch.equal(dequantize_4bit(packed_ref.view(-1), from_bitsandbytes(state_ref)), ours)


def _bitsandbytes_has_avx512() -> bool:
    from bitsandbytes.cextension import lib

    return bool(lib.has_avx512f_cpu())


@pytest.mark.parametrize("shape, blocksize", [((5, 80), 64), ((3, 48), 32), ((4, 96), 64), ((7, 160), 128)])
def test_bitsandbytes_cpu_defect_on_rows_that_split_blocks(shape, blocksize):
    """bitsandbytes 0.50's AVX-512 CPU kernel dequantizes wrongly when the last dimension is a multiple of 16 but
    not of the blocksize (blocksize < 2048, more than one block): it takes the absmax of row r, column c from
    block r * (k // blocksize) + c // blocksize instead of (r * k + c) // blocksize. On a CPU without AVX-512 it
    takes another path, and agrees with us."""
    torch.manual_seed(3)
    w = torch.randn(shape)
    packed, state = quantize_4bit(w, blocksize, "nf4")
    ours = dequantize_4bit(packed, state)
    theirs = bnb.dequantize_4bit(packed.view(-1, 1), to_bitsandbytes(state))
    q = unpack_4bit(packed, w.numel()).long()
    block = torch.arange(w.numel()) // blocksize
    exact = (state.code.double()[q] * state.absmax.double()[block]).view(shape)  # float64 reference
    assert torch.equal(ours, exact.float())  # the product of two float32 rounded once: the float32 product
    if _bitsandbytes_has_avx512():
        assert not torch.equal(theirs, ours)
        wrong_block = torch.arange(shape[0])[:, None] * (shape[1] // blocksize) + torch.arange(shape[1]) // blocksize
        assert torch.equal(theirs, (state.code[q].view(shape) * state.absmax[wrong_block]))
    else:
        assert torch.equal(theirs, ours)


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), blocksize=st.sampled_from(BLOCKSIZES[:3]), quant_type=st.sampled_from(QUANT_TYPES),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_the_largest_gap_times_absmax(n, blocksize, quant_type, dtype, seed):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dtype)
    packed, state = quantize_4bit(w, blocksize, quant_type)
    w_hat = dequantize_4bit(packed, state)
    assert w_hat.shape == w.shape and w_hat.dtype == dtype
    absmax = state.absmax.repeat_interleave(blocksize)[:n].double()
    bound = absmax * (max_gap(state.code) / 2 + 1e-6)  # + float32 rounding of the scaling and the product
    rounding = w.double().abs().max() * {torch.float32: 0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    assert bool(((w_hat.double() - w.double()).abs() <= bound + rounding).all())


@settings(max_examples=60, deadline=None)
@given(q=st.lists(st.integers(0, 15), min_size=0, max_size=300))
def test_pack_unpack_round_trip_and_half_a_byte_per_value(q):
    codes = torch.tensor(q, dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(q) + 1) // 2
    assert torch.equal(unpack_4bit(packed, len(q)), codes)


def test_pack_puts_the_first_value_in_the_high_nibble():
    assert pack_4bit(torch.tensor([1, 2, 15])).tolist() == [0x12, 0xF0]
    assert unpack_4bit(torch.tensor([0x12, 0xF0], dtype=torch.uint8), 3).tolist() == [1, 2, 15]


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), double_quant=st.booleans())
def test_packed_weight_is_half_a_byte_per_value_and_dequantizes_to_the_input_shape(shape, double_quant):
    w = torch.randn(shape).to(torch.bfloat16)
    packed, state = quantize_4bit(w, 32, "nf4", double_quant=double_quant)
    assert packed.shape == ((w.numel() + 1) // 2,)
    assert state.absmax.numel() == math.ceil(w.numel() / 32)
    assert dequantize_4bit(packed, state).shape == w.shape


def test_nf4_beats_int4_and_fp4_on_normal_data():
    w = torch.randn(64 * 512, generator=torch.Generator().manual_seed(4))
    errors = {q: quantization_error(w, dequantize_4bit(*quantize_4bit(w, 64, q))).mse for q in ("nf4", "fp4", "int4")}
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"]


def test_quantization_error_worked_example():
    error = quantization_error(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.0]))
    assert math.isclose(error.mse, 0.005, rel_tol=1e-6) and math.isclose(error.max_abs_error, 0.1, rel_tol=1e-6)
    assert math.isclose(error.snr_db, 10 * math.log10(1 / 0.005), rel_tol=1e-6)


# ---------------------------------------------------------------- bitsandbytes' Linear4bit from our weight


@pytest.mark.parametrize("double_quant", [False, True])
def test_linear4bit_from_our_weight_computes_x_times_our_dequantized_weight(double_quant):
    torch.manual_seed(5)
    W, bias, x = torch.randn(64, 128) * 0.05, torch.randn(64), torch.randn(3, 128)
    packed, state = quantize_4bit(W, 64, "nf4", double_quant=double_quant)
    layer = to_linear4bit(packed, state, bias)
    layer.train()  # the dequantize-then-matmul path (eval mode may use a bfloat16 CPU kernel)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, dequantize_4bit(packed, state), bias))


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("blocksize", [16, 48, 8192, 0, -64, "64", True, 64.0])
def test_unsupported_blocksize_is_refused(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        quantize_4bit(torch.randn(128), blocksize)


@pytest.mark.parametrize("w", [torch.arange(64), torch.ones(64, dtype=torch.int8), torch.ones(64, dtype=torch.bool),
                               torch.randn(64, dtype=torch.float64)], ids=["int64", "int8", "bool", "float64"])
def test_non_float32_16_dtype_is_refused(w):
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        quantize_4bit(w)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [5, 130])  # a full block, and the partial last block
def test_nan_and_inf_are_refused(bad, where):
    w = torch.randn(150)
    w[where] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_4bit(w, 64)


def test_empty_tensor_not_a_tensor_and_unknown_quant_type_are_refused():
    with pytest.raises(ValueError, match="empty"):
        quantize_4bit(torch.empty(0, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_4bit([0.1, 0.2])
    with pytest.raises(ValueError, match="quant_type"):
        quantize_4bit(torch.randn(64), quant_type="nf8")
    with pytest.raises(TypeError, match="double_quant"):
        quantize_4bit(torch.randn(64), double_quant="yes")


def test_bad_packed_input_is_refused():
    packed, state = quantize_4bit(torch.randn(100))
    with pytest.raises(ValueError, match="needs 50"):
        dequantize_4bit(packed[:-1], state)
    with pytest.raises(TypeError, match="uint8"):
        dequantize_4bit(packed.int(), state)
    with pytest.raises(TypeError, match="QuantState"):
        dequantize_4bit(packed, state.absmax)
    with pytest.raises(ValueError, match="0..15"):
        pack_4bit(torch.tensor([3, 16]))
    with pytest.raises(TypeError, match="integer"):
        pack_4bit(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="n must be"):
        unpack_4bit(packed, 7)
    with pytest.raises(ValueError, match="int4"):
        to_bitsandbytes(quantize_4bit(torch.randn(64), quant_type="int4")[1])


# ---------------------------------------------------------------- pictures and the widget


def test_explain_value_follows_one_weight():
    w = torch.tensor([-0.765432, 1.0] + [0.0] * 62)
    found = explain_value(w, 0, 0)
    assert found.code == 1 and found.level == float(nf4_code()[1]) and found.absmax == 1.0
    assert found.dequantized == float(dequantize_4bit(*quantize_4bit(w))[0])
    with pytest.raises(ValueError, match="block"):
        explain_value(w, 1, 0)
    with pytest.raises(ValueError, match="index"):
        explain_value(w, 0, 64)


def test_plot_and_widget_draw_the_sixteen_levels():
    w = torch.randn(3, 64)
    fig = plot_code_levels(w, nf4_code(), float(w.abs().max()))
    assert len(fig.axes[0].lines) == 16
    widget = code_explorer(w)
    block, _, quant_type, caption, _ = widget.children
    block.value, quant_type.value = 2, "int4"
    assert caption.value.startswith("<code>block 2, value 0")


def test_comparison_lookup_and_absmax_figures():
    w = torch.randn(5, 64)
    fig = plot_code_comparison(blockwise_absmax_scale(w, 64)[1])
    assert [ax.get_title() for ax in fig.axes] == ["INT4", "FP4", "NF4"] and all(len(ax.lines) == 16 for ax in fig.axes)
    fig = plot_value_lookup(w, 3, 5, quant_type="fp4")
    found = explain_value(w, 3, 5, quant_type="fp4")
    assert len(fig.axes[0].lines) == 17 and f"code {found.code}" in fig.axes[0].get_title()
    assert fig.axes[0].lines[-1].get_xdata()[0] == pytest.approx(found.value)
    absmax = torch.linspace(1, 2, 5)
    fig = plot_dequantized_vs_absmax(-0.7, absmax, {"nf4": -absmax, "int4": -absmax / 2}, target=-0.75)
    assert len(fig.axes[0].lines) == 4  # two curves, the value and the target
    with pytest.raises(ValueError, match="shape"):
        plot_dequantized_vs_absmax(-0.7, absmax, {"nf4": absmax[:2]})
    with pytest.raises(ValueError, match="quant_types"):
        plot_code_comparison(w, ())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to compare with bitsandbytes' CUDA kernels")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nf4_matches_bitsandbytes_on_cuda(dtype):
    torch.manual_seed(6)
    for blocksize in BLOCKSIZES:
        w = torch.randn(3 * blocksize + 33, device="cuda").to(dtype)
        packed, state = quantize_4bit(w, blocksize, "nf4")
        packed_ref, state_ref = bnb.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        assert torch.equal(packed, packed_ref.view(-1)) and torch.equal(state.absmax, state_ref.absmax)
        assert torch.equal(dequantize_4bit(packed, state), bnb.dequantize_4bit(packed_ref, state_ref).view(-1))
