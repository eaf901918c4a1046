"""Tests of qlora_lessons.adamw: the shared AdamW update equals torch.optim.AdamW's, and the checks of its
hyperparameters name what is wrong."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons.adamw import adamw_update_, check_adamw_hyperparameters


def test_the_docstring_example_first_step_moves_by_lr():
    w, g, m, v = torch.tensor([1.0]), torch.tensor([0.5]), torch.zeros(1), torch.zeros(1)
    adamw_update_(w, g, m, v, step=1, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert torch.allclose(m, torch.tensor([0.05])) and torch.allclose(v, torch.tensor([0.00025]))
    assert torch.allclose(w, torch.tensor([0.9]))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), steps=st.integers(1, 4), lr=st.floats(1e-5, 1.0), beta1=st.floats(0.0, 0.99),
       beta2=st.floats(0.5, 0.9999), weight_decay=st.sampled_from([0.0, 1e-2, 0.5]), seed=st.integers(0, 2**16))
def test_equals_torch_adamw_to_the_last_bit(n, steps, lr, beta1, beta2, weight_decay, seed):
    generator = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(n, generator=generator))
    w, m, v = p.detach().clone(), torch.zeros(n), torch.zeros(n)
    hyper = {"lr": lr, "betas": (beta1, beta2), "eps": 1e-8, "weight_decay": weight_decay}
    reference = torch.optim.AdamW([p], **hyper)
    for t in range(1, steps + 1):
        p.grad = torch.randn(n, generator=generator)
        reference.step()
        adamw_update_(w, p.grad, m, v, step=t, **hyper)
    assert torch.equal(w, p.detach())
    assert torch.equal(m, reference.state[p]["exp_avg"]) and torch.equal(v, reference.state[p]["exp_avg_sq"])


def test_hyperparameters_come_back_as_defaults():
    assert check_adamw_hyperparameters(1e-3, [0.9, 0.999], 1e-8, 0) == {
        "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1e-3, (0.9, 0.999), 1e-8, 0.0), ValueError, "lr must be >= 0"),
        ((float("nan"), (0.9, 0.999), 1e-8, 0.0), ValueError, "lr must be finite"),
        ((True, (0.9, 0.999), 1e-8, 0.0), TypeError, "lr must be a float"),
        ((1e-3, (0.9,), 1e-8, 0.0), TypeError, "betas must be a pair"),
        ((1e-3, (0.9, 1.0), 1e-8, 0.0), ValueError, r"betas\[1\] must be in \[0, 1\)"),
        ((1e-3, ("0.9", 0.999), 1e-8, 0.0), TypeError, r"betas\[0\] must be a float"),
        ((1e-3, (0.9, 0.999), 0.0, 0.0), ValueError, "eps must be > 0"),
        ((1e-3, (0.9, 0.999), 1e-8, -1.0), ValueError, "weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise_errors_naming_them(args, error, match):
    with pytest.raises(error, match=match):
        check_adamw_hyperparameters(*args)
