"""qlora_lessons.lowrank and lowrank_plots: truncated SVD (Eckart-Young), energy, effective rank, plots."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qlora_lessons.lowrank import (  # noqa: E402
    count_low_rank_params,
    effective_rank,
    low_rank_approx,
    low_rank_factors,
    random_matrix_like,
    singular_value_energy,
    summarize_low_rank,
)
from qlora_lessons.lowrank_plots import (  # noqa: E402
    plot_energy_by_layer,
    plot_low_rank,
    plot_spectrum,
    rank_slider,
    sample_image,
)


@st.composite
def matrix_and_rank(draw):
    """A float64 matrix of 1..12 rows and columns and a rank r in [1, min(m, n)]."""
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return W, draw(st.integers(1, min(m, n)))


@settings(max_examples=60, deadline=None)
@given(matrix_and_rank())
def test_error_is_the_norm_of_the_dropped_singular_values(case):
    """Eckart-Young: ||W - W_r||_F = sqrt(S[r]^2 + ...) and ||W - W_r||_2 = S[r]."""
    W, r = case
    S = torch.linalg.svdvals(W)
    residual = W - low_rank_approx(W, r)
    tolerance = 1e-9 * float(S[0])
    assert abs(float(residual.norm()) - float(S[r:].pow(2).sum().sqrt())) <= tolerance
    spectral = float(torch.linalg.matrix_norm(residual, ord=2))
    assert abs(spectral - (float(S[r]) if r < len(S) else 0.0)) <= tolerance


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank(), st.integers(0, 2**31 - 1))
def test_no_other_rank_r_matrix_is_closer(case, seed):
    """Random rank-r matrices, and small perturbations of the optimal factors, are never closer to W."""
    W, r = case
    m, n = W.shape
    best = float((W - low_rank_approx(W, r)).norm())
    generator = torch.Generator().manual_seed(seed)
    B, A = low_rank_factors(W, r)
    candidates = [torch.randn(m, r, generator=generator, dtype=W.dtype) @ torch.randn(r, n, generator=generator,
                                                                                      dtype=W.dtype)
                  for _ in range(5)]
    for eps in (1e-1, 1e-3):
        dB = torch.randn(m, r, generator=generator, dtype=W.dtype) * eps * W.abs().max()
        dA = torch.randn(r, n, generator=generator, dtype=W.dtype) * eps
        candidates.append((B + dB) @ (A + dA))  # a rank-r matrix next to the optimum
    for candidate in candidates:
        assert float((W - candidate).norm()) >= best * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank())
def test_matches_numpy_truncated_svd(case):
    W, r = case
    U, S, Vh = np.linalg.svd(W.numpy(), full_matrices=False)
    reference = (U[:, :r] * S[:r]) @ Vh[:r]
    np.testing.assert_allclose(low_rank_approx(W, r).numpy(), reference, rtol=0, atol=1e-9 * S[0])


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank())
def test_factors_have_rank_r_and_the_full_rank_gives_w_back(case):
    W, r = case
    B, A = low_rank_factors(W, r)
    assert B.shape == (W.shape[0], r) and A.shape == (r, W.shape[1])
    assert B.numel() + A.numel() == count_low_rank_params(*W.shape, r)
    assert torch.linalg.matrix_rank(B @ A) == r  # Gaussian W has distinct non-zero singular values
    assert torch.allclose(low_rank_approx(W, min(W.shape)), W, rtol=0, atol=1e-9 * float(W.abs().max()))


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank(), st.floats(0.01, 1.0))
def test_energy_and_effective_rank(case, energy):
    W, r = case
    fractions = singular_value_energy(W)
    assert fractions.shape == (min(W.shape),)
    assert torch.all(fractions[1:] >= fractions[:-1]) and fractions[-1] == 1.0
    relative_error = (W - low_rank_approx(W, r)).norm() / W.norm()
    assert abs(float(fractions[r - 1]) - (1 - float(relative_error) ** 2)) <= 1e-9
    k = effective_rank(W, energy)
    assert fractions[k - 1] >= energy and (k == 1 or fractions[k - 2] < energy)


def test_effective_rank_by_hand():
    D = torch.diag(torch.tensor([3.0, 1.0]))  # energies 9 / 10 and 10 / 10
    assert torch.allclose(singular_value_energy(D), torch.tensor([0.9, 1.0]))
    assert effective_rank(D, 0.8) == 1 and effective_rank(D, 0.95) == 2 and effective_rank(D, 1.0) == 2


def test_a_low_rank_update_needs_far_fewer_ranks_than_random():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(200, 4, generator=g) @ torch.randn(4, 300, generator=g) + 1e-3 * torch.randn(200, 300, generator=g)
    random = random_matrix_like(W, seed=1)
    assert random.shape == W.shape and random.dtype == W.dtype
    assert torch.isclose(random.norm(), W.norm(), rtol=1e-5)
    assert torch.equal(random, random_matrix_like(W, seed=1)) and not torch.equal(random, random_matrix_like(W, seed=2))
    assert effective_rank(W, 0.99) <= 4 and effective_rank(random, 0.99) > 100


def test_parameter_counts_of_the_articles_example():
    assert count_low_rank_params(1000, 1000, 8) == 16_000  # 1000x8 + 8x1000 instead of 1,000,000
    largest = max(r for r in range(1, 1001) if count_low_rank_params(1000, 1000, r) < 0.01 * 1000 * 1000)
    assert largest == 4  # "more than 99% fewer" holds up to r = 4; r = 8 saves 98.4%


def test_half_precision_is_computed_in_float32_and_returned_as_given():
    W = torch.randn(16, 8).half()
    W_r = low_rank_approx(W, 3)
    assert W_r.dtype == torch.float16 and W_r.shape == (16, 8)
    assert torch.allclose(W_r.float(), low_rank_approx(W.float(), 3), atol=1e-2)


def test_summary_agrees_with_the_functions():
    W = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    summary = summarize_low_rank(W, 5)
    assert summary.params == count_low_rank_params(30, 20, 5) and summary.full_params == 600
    assert abs(summary.relative_error - float((W - low_rank_approx(W, 5)).norm() / W.norm())) < 1e-6
    assert abs(summary.energy - float(singular_value_energy(W)[4])) < 1e-6
    assert repr(summary).startswith("rank 5 of a 30x20 matrix: relative error")


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: low_rank_approx(torch.randn(4, 3), 0), ValueError, r"r must be between 1 and min\(m, n\) = 3.*r=0"),
        (lambda: low_rank_approx(torch.randn(4, 3), 4), ValueError, "r=4"),
        (lambda: low_rank_approx(torch.randn(4, 3), 2.0), TypeError, "r must be an int"),
        (lambda: low_rank_approx(torch.randn(4), 1), ValueError, r"2-D matrix, got shape \(4,\)"),
        (lambda: low_rank_approx(torch.ones(4, 3, dtype=torch.int64), 1), TypeError, "floating-point dtype.*int64"),
        (lambda: low_rank_approx(np.ones((4, 3)), 1), TypeError, "torch.Tensor, got ndarray"),
        (lambda: low_rank_approx(torch.tensor([[1.0, float("nan")]]), 1), ValueError, "NaN or Inf"),
        (lambda: singular_value_energy(torch.zeros(3, 3)), ValueError, "all zeros"),
        (lambda: effective_rank(torch.eye(3), 0.0), ValueError, r"energy must be a number in \(0, 1\], got 0.0"),
        (lambda: effective_rank(torch.eye(3), 1.5), ValueError, "got 1.5"),
        (lambda: count_low_rank_params(0, 5, 1), ValueError, "m must be a positive int, got 0"),
        (lambda: count_low_rank_params(10, 5, 6), ValueError, r"min\(m, n\) = 5.*r=6"),
        (lambda: plot_spectrum(torch.eye(3), max_rank=4), ValueError, "max_rank.*got 4"),
        (lambda: rank_slider(torch.eye(3), max_rank=0), ValueError, "max_rank.*got 0"),
        (lambda: plot_low_rank(torch.eye(3), ranks=(1, 5)), ValueError, r"ranks must be an int .* = 3, got 5"),
        (lambda: plot_low_rank(torch.eye(3), ranks=()), ValueError, "ranks must not be empty"),
        (lambda: sample_image(4), ValueError, "size must be an int between 8 and 512 .*got 4"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_spectrum_plot_draws_w_and_its_random_twin():
    g = torch.Generator().manual_seed(0)
    dW = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    fig = plot_spectrum(dW, label="dW", max_rank=20)
    spectrum, energy = fig.axes
    assert len(spectrum.lines) == 2 and len(energy.lines) == 3  # dW, random (and a 90% guide line)
    assert spectrum.get_yscale() == "log"
    assert np.allclose(energy.lines[0].get_ydata(), singular_value_energy(dW)[:20].numpy())
    assert energy.lines[0].get_ydata()[2] > 0.999 > energy.lines[1].get_ydata()[2]  # rank 3 vs random


def test_energy_by_layer_draws_group_means_and_one_random_line_per_shape():
    g = torch.Generator().manual_seed(0)
    low = [torch.randn(12, 2, generator=g) @ torch.randn(2, 10, generator=g) for _ in range(3)]
    wide = [torch.randn(10, 12, generator=g) for _ in range(2)]  # the transpose of low's shape: one random line
    fig = plot_energy_by_layer({"low": low, "wide": wide}, max_rank=8)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines][:3] == ["low", "wide", "random 10x12"]
    mean = torch.stack([singular_value_energy(W)[:8] for W in low]).mean(0)
    assert np.allclose(ax.lines[0].get_ydata(), mean.numpy()) and ax.lines[0].get_ydata()[1] > 0.999
    with pytest.raises(ValueError, match=r"max_rank must be an int between 1 and the smallest min\(m, n\) = 10"):
        plot_energy_by_layer({"low": low}, max_rank=11)
    with pytest.raises(ValueError, match="non-empty list of matrices"):
        plot_energy_by_layer({"low": []})


def test_energy_by_layer_gives_each_random_shape_its_own_line_style():
    g = torch.Generator().manual_seed(0)
    groups = {"square": [torch.randn(12, 12, generator=g)], "tall": [torch.randn(16, 12, generator=g)]}
    (ax,) = plot_energy_by_layer(groups, max_rank=8).axes
    random_lines = [line for line in ax.lines if line.get_label().startswith("random")]
    assert len(random_lines) == 2 and random_lines[0].get_linestyle() != random_lines[1].get_linestyle()
    many = {f"g{i}": [torch.randn(8, 8 + i, generator=g)] for i in range(5)}
    with pytest.raises(ValueError, match="at most 4 distinct matrix shapes"):
        plot_energy_by_layer(many, max_rank=4)


def test_low_rank_row_titles_carry_the_errors():
    W = sample_image(32)
    fig = plot_low_rank(W, ranks=(1, 8), title="photo")
    titles = [ax.get_title() for ax in fig.axes]
    errors = [summarize_low_rank(W, r).relative_error for r in (1, 8)]
    assert titles == ["photo", f"rank 1: error {errors[0]:.2f}", f"rank 8: error {errors[1]:.2f}"]
    assert errors[1] < errors[0]
    signed = plot_low_rank(torch.randn(8, 8), ranks=(2,))
    low, high = signed.axes[0].images[0].get_clim()
    assert low == -high  # signed matrices are drawn red-blue around zero


def test_rank_slider_caption_follows_the_slider():
    W = sample_image(32)
    widget = rank_slider(W, max_rank=16, title="photo")
    slider, caption, _pictures = widget.children
    assert (slider.min, slider.max, slider.value) == (1, 16, 8)
    assert caption.value == repr(summarize_low_rank(W, 8))
    slider.value = 3
    assert caption.value == repr(summarize_low_rank(W, 3))


def test_sample_image_is_a_grayscale_square_in_the_unit_range():
    image = sample_image(64)
    assert image.shape == (64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.1
    assert effective_rank(image, 0.99) < 32  # a photograph is close to low rank
