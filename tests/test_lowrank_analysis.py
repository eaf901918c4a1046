"""qlora_lessons.lowrank_analysis: subspace similarity and amplification (LoRA, section 7)."""

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from qlora_lessons.lowrank_analysis import (  # noqa: E402
    measure_amplification,
    plot_subspace_similarity,
    similarity_grid,
    subspace_similarity,
)


def test_similarity_of_an_adapter_with_itself_and_with_a_rotation_of_its_rows():
    A = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    assert subspace_similarity(A, A, 4, 4) == pytest.approx(1.0)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))[0]
    assert subspace_similarity(A, Q @ A, 4, 4) == pytest.approx(1.0)  # the same row space, other rows
    grid = similarity_grid(A, A)
    assert grid.shape == (4, 4) and torch.allclose(grid.diagonal(), torch.ones(4, dtype=torch.float64))


def test_orthogonal_subspaces_have_similarity_zero_and_random_ones_about_j_over_d():
    eye = torch.eye(16)
    assert subspace_similarity(eye[:3], eye[3:8], 3, 5) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    values = [subspace_similarity(torch.randn(1, 256, generator=g), torch.randn(32, 256, generator=g), 1, 32)
              for _ in range(200)]
    assert sum(values) / len(values) == pytest.approx(32 / 256, rel=0.15)


def test_grid_agrees_with_the_single_values():
    g = torch.Generator().manual_seed(2)
    A1, A2 = torch.randn(3, 20, generator=g), torch.randn(6, 20, generator=g)
    grid = similarity_grid(A1, A2)
    for i in (1, 2, 3):
        for j in (1, 4, 6):
            assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(A1, A2, i, j))


def test_amplification_of_an_update_along_w0s_own_directions_and_away_from_them():
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(32, 24, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    along = measure_amplification(U[:, :2] @ Vh[:2], W0, 2)  # dW in W0's top-2 directions
    assert along.on_dW == pytest.approx(along.on_W0) and along.on_W0 == pytest.approx(math.sqrt(S[0] ** 2 + S[1] ** 2))
    away = measure_amplification(U[:, -2:] @ Vh[-2:], W0, 2)  # dW in W0's weakest directions
    assert away.on_dW == pytest.approx(math.sqrt(S[-1] ** 2 + S[-2] ** 2)) and away.factor > along.factor
    assert 0 < along.on_random < along.on_W0 and "amplification" in repr(along)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same number of columns"):
        subspace_similarity(torch.randn(2, 8), torch.randn(2, 9), 1, 1)
    with pytest.raises(ValueError, match="r must be between 1"):
        subspace_similarity(torch.randn(2, 8), torch.randn(2, 8), 3, 1)
    with pytest.raises(ValueError, match="same shape"):
        measure_amplification(torch.randn(4, 4), torch.randn(4, 5), 1)
    with pytest.raises(TypeError, match="A1 must be a torch.Tensor"):
        similarity_grid([[1.0]], torch.randn(1, 1))
    with pytest.raises(ValueError, match="grid must be a 2-D tensor"):
        plot_subspace_similarity(torch.randn(3))


def test_plot_shows_the_grid():
    grid = similarity_grid(torch.randn(2, 10), torch.randn(5, 10))
    fig = plot_subspace_similarity(grid, ("r=2", "r=5"))
    assert fig.axes[0].images[0].get_array().shape == (2, 5) and "r=5" in fig.axes[0].get_xlabel()
