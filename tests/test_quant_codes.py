"""Tests of qlora_lessons.quant_codes: fake quantization with any code, level use and entropy, NF4's recipe
with any offset, the equal-use and Lloyd-Max codes, asymmetric int4."""

from __future__ import annotations

import pytest
import torch

from qlora_lessons.blockwise import blockwise_absmax_scale, quantization_error
from qlora_lessons.nf4 import NF4_OFFSET, dequantize_4bit, nf4_code, quantize_4bit
from qlora_lessons.quant_codes import (
    code_usage,
    dequantize_int4_asym,
    equal_usage_code,
    fake_quantize,
    lloyd_max_code,
    normal_code,
    plot_offset_sweep,
    quantize_int4_asym,
    usage_entropy,
)


def _normal(n: int = 2**16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_fake_quantize_with_nf4_equals_quantize_then_dequantize():
    w = _normal().view(256, 256) * 0.02
    assert torch.equal(fake_quantize(w, nf4_code(), 64), dequantize_4bit(*quantize_4bit(w, 64, "nf4")))


def test_normal_code_at_nf4_offset_is_nf4_and_other_offsets_keep_minus_one_zero_one():
    assert torch.equal(normal_code(NF4_OFFSET), nf4_code())
    for offset in (0.9, 0.95, 0.99):
        code = normal_code(offset)
        assert code.shape == (16,) and bool((code.diff() > 0).all())
        assert float(code[0]) == -1.0 and float(code[7]) == 0.0 and float(code[15]) == 1.0


def test_usage_sums_to_one_and_entropy_is_four_bits_for_equal_use():
    used = code_usage(_normal(), nf4_code(), 64)
    assert used.shape == (16,) and abs(float(used.sum()) - 1) < 1e-6
    assert usage_entropy(torch.full((16,), 1 / 16)) == pytest.approx(4.0)
    assert usage_entropy(torch.tensor([1.0, 0.0])) == 0.0
    assert 3.5 < usage_entropy(used) < 4.0  # NF4 is far from equal use after absmax scaling


def test_equal_use_code_has_more_entropy_but_more_error_and_lloyd_max_less_of_both():
    w = _normal(2**17, seed=1)
    _, scaled = blockwise_absmax_scale(w, 64)
    codes = {"nf4": nf4_code(), "equal": equal_usage_code(scaled), "lloyd": lloyd_max_code(scaled, iterations=30)}
    for code in codes.values():
        assert code.shape == (16,) and bool((code.diff() > 0).all())
        assert {-1.0, 0.0, 1.0} <= set(code.tolist())
    entropy = {k: usage_entropy(code_usage(w, c, 64)) for k, c in codes.items()}
    snr = {k: quantization_error(w, fake_quantize(w, c, 64)).snr_db for k, c in codes.items()}
    assert entropy["equal"] > entropy["nf4"] > entropy["lloyd"]
    assert snr["equal"] < snr["nf4"] - 0.5 and snr["lloyd"] > snr["nf4"] + 0.1


def test_asymmetric_int4_round_trip_within_half_a_step_and_hits_min_and_max():
    w = _normal(4096, seed=2).view(64, 64) * 0.02
    q, scale, minimum = quantize_int4_asym(w, 64)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.dtype == minimum.dtype == torch.float16
    assert scale.shape == minimum.shape == (64,)
    w_hat = dequantize_int4_asym(q, scale, minimum, tuple(w.shape))
    step = scale.float().repeat_interleave(64).view(64, 64)
    assert bool(((w - w_hat).abs() <= step * 0.51 + 1e-3 * step + 2e-5).all())  # half a step, plus float16 constants
    assert int(q.view(64, 64).amin(dim=1).max()) == 0 and int(q.view(64, 64).amax(dim=1).min()) == 15


def test_asymmetric_int4_beats_symmetric_int4_on_normal_data():
    w = _normal(2**16, seed=3)
    asym = quantization_error(w, dequantize_int4_asym(*quantize_int4_asym(w, 64), tuple(w.shape)))
    sym = quantization_error(w, dequantize_4bit(*quantize_4bit(w, 64, "int4")))
    assert asym.snr_db > sym.snr_db + 1


def test_a_constant_block_comes_back_exactly():
    w = torch.full((64,), 0.5)
    assert torch.equal(dequantize_int4_asym(*quantize_int4_asym(w, 64), (64,)), w)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="offset"):
        normal_code(1.0)
    with pytest.raises(ValueError, match="sorted"):
        fake_quantize(_normal(64), torch.tensor([1.0, 0.0]), 64)
    with pytest.raises(TypeError, match="code"):
        code_usage(_normal(64), torch.zeros(2, 2), 64)
    with pytest.raises(ValueError, match="blocksize"):
        fake_quantize(_normal(64), nf4_code(), 48)
    with pytest.raises(ValueError, match="multiple of blocksize"):
        quantize_int4_asym(_normal(100), 64)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lloyd_max_code(_normal(256) * 3)
    with pytest.raises(ValueError, match="iterations"):
        lloyd_max_code(_normal(256).clamp(-1, 1), iterations=0)
    with pytest.raises(TypeError, match="q must be"):
        dequantize_int4_asym(torch.zeros(64), torch.ones(1).half(), torch.ones(1).half(), (64,))


def test_offset_sweep_figure():
    fig = plot_offset_sweep(torch.linspace(0.9, 0.99, 4), torch.tensor([20.8, 20.9, 20.7, 20.2]))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="one length"):
        plot_offset_sweep(torch.zeros(3), torch.zeros(4))
