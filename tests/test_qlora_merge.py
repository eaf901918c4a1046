"""qlora_merge: a merge into 4 bits requantizes W4 + dW; a small dW is mostly rounded away, a large one kept."""

import bitsandbytes as bnb
import pytest
import torch

from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit
from qlora_lessons.qlora_merge import MergeRetention, merge_4bit, merge_retention, plot_merge_retention


def four_bit_weight(seed: int = 0, shape=(256, 512), double_quant: bool = True) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    return dequantize_4bit(*quantize_4bit(w, double_quant=double_quant))


def low_rank_delta(w4: torch.Tensor, relative_size: float, r: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(w4.shape[0], r, generator=generator) @ torch.randn(r, w4.shape[1], generator=generator)
    return delta * (relative_size * w4.norm() / delta.norm())


def test_a_zero_update_gives_the_4bit_weight_back():
    w4 = four_bit_weight(double_quant=False)
    assert torch.equal(merge_4bit(w4, torch.zeros_like(w4), double_quant=False), w4)


@pytest.mark.parametrize("relative_size, low, high", [(0.001, -0.1, 0.2), (0.3, 0.9, 1.1)])
def test_a_small_update_is_rounded_away_and_a_large_one_kept(relative_size, low, high):
    w4 = four_bit_weight()
    result = merge_retention([w4], [low_rank_delta(w4, relative_size)])
    assert low < result.kept < high, result
    assert result.relative_size == pytest.approx(relative_size, rel=1e-4)


def test_retention_grows_with_the_size_of_the_update():
    w4 = four_bit_weight()
    kept = [merge_retention([w4], [low_rank_delta(w4, s)]).kept for s in (0.003, 0.03, 0.3)]
    assert kept[0] < kept[1] < kept[2], kept


def test_layers_add_up_and_a_given_merge_is_measured_as_given():
    w4a, w4b = four_bit_weight(0), four_bit_weight(1, (128, 256))
    da, db = low_rank_delta(w4a, 0.05), low_rank_delta(w4b, 0.05, seed=2)
    both = merge_retention([w4a, w4b], [da, db])
    exact = merge_retention([w4a, w4b], [da, db], merged=[w4a + da, w4b + db])  # a merge that keeps all of dW
    assert exact.kept == pytest.approx(1.0) and exact.error == pytest.approx(0.0, abs=1e-6)
    assert min(merge_retention([w], [d]).kept for w, d in ((w4a, da), (w4b, db))) <= both.kept
    assert isinstance(both, MergeRetention) and "kept" in repr(both)


def test_the_course_quantizer_agrees_with_bitsandbytes_requantization():
    w4 = four_bit_weight()
    delta = low_rank_delta(w4, 0.05)
    packed, state = bnb.functional.quantize_4bit(w4 + delta, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = bnb.functional.dequantize_4bit(packed, state).float()
    assert merge_retention([w4], [delta], merged=[theirs]).kept == pytest.approx(
        merge_retention([w4], [delta]).kept, abs=0.01)


def test_bad_arguments_are_named():
    w4 = four_bit_weight()
    with pytest.raises(ValueError, match="delta"):
        merge_4bit(w4, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="quant_type"):
        merge_4bit(w4, torch.zeros_like(w4), quant_type="int8")
    with pytest.raises(ValueError, match="weights and deltas"):
        merge_retention([], [])
    with pytest.raises(ValueError, match="all zero"):
        merge_retention([w4], [torch.zeros_like(w4)])
    with pytest.raises(ValueError, match="merged"):
        merge_retention([w4], [w4], merged=[w4, w4])
    with pytest.raises(TypeError, match="results"):
        plot_merge_retention({})


def test_the_plot_has_one_point_per_result():
    w4 = four_bit_weight()
    results = {k: merge_retention([w4], [low_rank_delta(w4, 0.01 * k)]) for k in (1, 4)}
    fig = plot_merge_retention(results)
    assert len(fig.axes[0].lines[0].get_xdata()) == 2
