"""Tests of qlora_lessons.adam8bit: AdamW8bit against torch's AdamW (its 32-bit path, bit for bit), against
the textbook 8-bit quantizer of double_quant (its state, code for code), and against bitsandbytes' AdamW8bit on
CPU (state bytes equal; the first step equal; the codes equal once bitsandbytes' 65,536-slot rounding table is
used; the updates close after 20 steps)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons.adam8bit import AdamW8bit
from qlora_lessons.blockwise import blockwise_absmax_scale
from qlora_lessons.double_quant import (
    Blockwise8bitState,
    dequantize_blockwise_8bit,
    dynamic_map,
    quantize_blockwise_8bit,
)
from qlora_lessons.paging_state import optimizer_state_bytes

from tiny_models import tiny_llama

VOCAB = 128
STEPS = 20
HYPER = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def llama() -> torch.nn.Module:
    """A 2-layer Llama whose matrices (4,096 to 8,192 elements) get 8-bit state and whose norms (64) do not."""
    return tiny_llama(vocab_size=VOCAB)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for step in range(steps):
        ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(step % 4))  # (B, T)
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def numels(model: torch.nn.Module) -> list[int]:
    return [p.numel() for p in model.parameters()]


def relative_distance(a: torch.nn.Module, b: torch.nn.Module, start: torch.nn.Module) -> float:
    """||W_a - W_b|| / ||W_b - W_start||: how far apart two runs end, against how far one of them moved."""
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa: E731
    return float((flat(a) - flat(b)).norm() / (flat(b) - flat(start)).norm())


# ----- the 32-bit path is torch's AdamW ----------------------------------------------------------------------


def test_with_every_tensor_below_min_8bit_size_it_is_torch_adamw_bit_for_bit():
    ours, theirs = llama(), llama()
    optimizer = AdamW8bit(ours.parameters(), **HYPER, min_8bit_size=10**9)
    train(ours, optimizer, STEPS)
    train(theirs, torch.optim.AdamW(theirs.parameters(), **HYPER), STEPS)
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))
    assert optimizer.state_bytes == optimizer_state_bytes(numels(ours), "adamw").state_bytes  # no code tables


# ----- the 8-bit state -----------------------------------------------------------------------------------------


def test_state_layout_and_bytes_match_optimizer_state_bytes():
    model = llama()
    optimizer = AdamW8bit(model.parameters(), **HYPER)
    assert optimizer.state_bytes == 0  # nothing before the first step
    train(model, optimizer, 1)
    for p in model.parameters():
        state = optimizer.state[p]
        if p.numel() >= 4096:
            assert state["exp_avg_codes"].dtype == state["exp_avg_sq_codes"].dtype == torch.uint8
            assert state["exp_avg_codes"].shape == p.shape
            assert state["exp_avg_absmax"].shape == state["exp_avg_sq_absmax"].shape == (math.ceil(p.numel() / 256),)
        else:
            assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].shape == p.shape
    assert optimizer.state_bytes == optimizer_state_bytes(numels(model), "adamw8bit").state_bytes
    assert optimizer.state_bytes < optimizer_state_bytes(numels(model), "adamw").state_bytes / 3


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3000), blocksize=st.sampled_from([64, 256]), lr=st.floats(1e-4, 0.1),
       weight_decay=st.sampled_from([0.0, 0.05]), seed=st.integers(0, 2**16))
def test_each_step_is_dequantize_adamw_requantize(n, blocksize, lr, weight_decay, seed):
    """Three steps by hand with the textbook quantizer equal the optimizer's: weights, codes and absmax."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=generator)
    p = torch.nn.Parameter(w.clone())
    optimizer = AdamW8bit([p], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                          blocksize=blocksize, min_8bit_size=1, v_floor=False)
    code_m, code_v = dynamic_map(signed=True), dynamic_map(signed=False)
    m, v = torch.zeros(n), torch.zeros(n)
    for t in (1, 2, 3):
        g = torch.randn(n, generator=generator) * 10.0 ** float(torch.randint(-4, 1, (1,), generator=generator))
        p.grad = g.clone()
        optimizer.step()
        # AdamW on the dequantized moments, in torch's order of float operations (so equal to the last bit).
        w = w * (1 - lr * weight_decay) if weight_decay else w
        m = torch.lerp(m, g, 1 - 0.9)  # 0.9 m + 0.1 g
        v = (v * 0.999).addcmul(g, g, value=1 - 0.999)  # 0.999 v + 0.001 g^2
        w = w.addcdiv(m, v.sqrt() / (1 - 0.999**t) ** 0.5 + 1e-8, value=-lr / (1 - 0.9**t))
        qm, sm = quantize_blockwise_8bit(m, blocksize, code=code_m)  # store in 8 bits, then load again
        qv, sv = quantize_blockwise_8bit(v, blocksize, code=code_v)
        m, v = dequantize_blockwise_8bit(qm, sm), dequantize_blockwise_8bit(qv, sv)
        state = optimizer.state[p]
        assert torch.equal(state["exp_avg_codes"], qm) and torch.equal(state["exp_avg_sq_codes"], qv)
        assert torch.equal(state["exp_avg_absmax"], sm.absmax) and torch.equal(state["exp_avg_sq_absmax"], sv.absmax)
        assert torch.equal(p.detach(), w)
        m_lib, v_lib = optimizer.moments(p)
        assert torch.equal(m_lib, m) and torch.equal(v_lib, v)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2000), scale=st.floats(1e-12, 1e3), seed=st.integers(0, 2**16))
def test_stored_moments_are_within_half_a_level_gap_of_the_exact_ones(n, scale, seed):
    """One step from zero state: m = 0.1 g and v = 0.001 g^2 exactly; the stored ones are off by at most half
    the widest gap of their map, times their block's absmax."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(n, generator=generator) * scale
    p = torch.nn.Parameter(torch.zeros(n))
    optimizer = AdamW8bit([p], lr=1e-3, weight_decay=0.0, min_8bit_size=1)
    p.grad = g
    optimizer.step()
    m, v = optimizer.moments(p)
    for stored, exact, code in ((m, torch.lerp(torch.zeros(n), g, 0.1), dynamic_map(True)),
                                (v, 0.001 * g * g, dynamic_map(False))):
        absmax, _ = blockwise_absmax_scale(exact, 256)
        bound = absmax.repeat_interleave(256)[:n] * float(code.diff().max()) / 2
        assert bool(((stored - exact).abs() <= bound * (1 + 1e-5) + 1e-30).all())
    assert bool((v >= 0).all())  # the unsigned map has no negative levels


def test_second_moments_far_below_their_block_maximum_round_to_zero_unless_floored():
    """The unsigned map's smallest positive level is 3.25e-7: rounded to the nearest level, v / absmax below half
    of it becomes 0, while m (signed map: its smallest levels are +-5.5e-7) is still stored. With ``v_floor``
    (the default) such a v is stored as the smallest positive level instead."""
    code_v = dynamic_map(signed=False)
    assert code_v[0] == 0 and math.isclose(float(code_v[1]), 3.25e-7, rel_tol=1e-6)
    g = torch.ones(256)
    g[0] = 1e-4  # v = 1e-3 g^2: 1e-8 of the block's largest, below 1.625e-7
    stored = {}
    for v_floor in (False, True):
        p = torch.nn.Parameter(torch.zeros(256))
        optimizer = AdamW8bit([p], lr=1e-3, weight_decay=0.0, min_8bit_size=1, v_floor=v_floor)
        p.grad = g
        optimizer.step()
        stored[v_floor] = optimizer.moments(p)
    (m, v), (m_floor, v_floor_) = stored[False], stored[True]
    assert v[0] == 0 and m[0] > 0 and bool((v[1:] > 0).all())
    assert torch.equal(m_floor, m) and torch.equal(v_floor_[1:], v[1:])
    assert v_floor_[0] == code_v[1] * 1e-3  # the smallest positive level times the block's absmax (1e-3 * 1^2)


def test_bfloat16_parameters_are_updated_in_float32():
    """The same gradients for a bfloat16 and a float32 copy of a weight: each bfloat16 step is the float32 step
    rounded once, so after 3 steps the two are within 3 bfloat16 roundings (relative 2^-8) of the largest
    magnitude the weight had on the way (at most |w| + 3 lr)."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(5000, generator=generator).to(torch.bfloat16).float()
    low, full = torch.nn.Parameter(w.to(torch.bfloat16)), torch.nn.Parameter(w.clone())
    optimizers = [AdamW8bit([low], **HYPER), AdamW8bit([full], **HYPER)]
    for _ in range(3):
        g = torch.randn(5000, generator=generator).to(torch.bfloat16)
        low.grad, full.grad = g, g.float()
        for optimizer in optimizers:
            optimizer.step()
    assert low.dtype == torch.bfloat16 and optimizers[0].state[low]["exp_avg_absmax"].dtype == torch.float32
    assert bool(((low.float() - full).abs() <= 3 * 2**-8 * (full.abs() + 3 * HYPER["lr"])).all())
    moved = low.detach().float() != w
    assert float((full.detach() - w).abs().mean()) > HYPER["lr"] and float(moved.float().mean()) > 0.9


def test_state_dict_round_trip_continues_identically():
    a, b = llama(), llama()
    first = AdamW8bit(embedding_in_32_bits(a), **HYPER)
    train(a, first, 3)
    b.load_state_dict(a.state_dict())
    second = AdamW8bit(embedding_in_32_bits(b), **HYPER)
    second.load_state_dict(first.state_dict())
    assert second.state[b.lm_head.weight]["exp_avg_codes"].dtype == torch.uint8
    assert second.state_bytes == first.state_bytes
    train(a, first, 3)
    train(b, second, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def embedding_in_32_bits(model: torch.nn.Module) -> list[dict]:
    """Parameter groups as transformers' Trainer sets bitsandbytes up: nn.Embedding weights keep 32-bit state."""
    embedding = model.model.embed_tokens.weight
    return [{"params": [p for p in model.parameters() if p is not embedding]},
            {"params": [embedding], "optim_bits": 32}]


def test_8bit_training_follows_32bit_training():
    start, ours, override, reference = llama(), llama(), llama(), llama()
    losses_8 = train(ours, AdamW8bit(ours.parameters(), **HYPER), STEPS)
    optimizer = AdamW8bit(embedding_in_32_bits(override), **HYPER)
    train(override, optimizer, STEPS)
    losses_32 = train(reference, torch.optim.AdamW(reference.parameters(), **HYPER), STEPS)
    assert relative_distance(ours, reference, start) < 0.15  # measured: 0.061
    assert relative_distance(override, reference, start) < 0.15  # measured: 0.065
    assert abs(losses_8[-1] - losses_32[-1]) < 0.05 * losses_32[-1]
    assert losses_8[-1] < 0.8 * losses_8[0]
    assert "exp_avg" in optimizer.state[override.model.embed_tokens.weight]  # float32 moments
    assert "exp_avg_codes" in optimizer.state[override.lm_head.weight]


def test_nearest_rounding_of_v_makes_embedding_rows_jump():
    """Tokens absent from a batch give their embedding rows a zero gradient; where v had been rounded to 0 and
    m had not, the update is lr * m_hat / eps."""
    start, ours, reference = llama(), llama(), llama()
    train(ours, AdamW8bit(ours.parameters(), **HYPER, v_floor=False), STEPS)
    train(reference, torch.optim.AdamW(reference.parameters(), **HYPER), STEPS)
    jumps = {name: float((p - q).detach().abs().max())
             for (name, p), q in zip(ours.named_parameters(), reference.parameters())}
    assert max(jumps, key=jumps.get) == "model.embed_tokens.weight"
    assert jumps["model.embed_tokens.weight"] > 100 * HYPER["lr"]  # measured: 54, 5,400 lr
    assert relative_distance(ours, reference, start) > 1.0


# ----- against bitsandbytes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bnb():
    bitsandbytes = pytest.importorskip("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return bitsandbytes


def table_rounding(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' CPU rounding (lesson 06): the level nearest the centre of the value's slot of 65,536."""
    slot = (((scaled + 1) * 0.5) * 65535 + 0.5).long()
    centres = torch.arange(65536) * 2 / 65535 - 1
    return torch.bucketize(centres, (code[:-1] + code[1:]) / 2)[slot].to(torch.uint8)


class TableRoundingAdamW8bit(AdamW8bit):
    def _nearest(self, scaled, code):
        return table_rounding(scaled, code)


def test_state_bytes_equal_what_bitsandbytes_allocates(bnb):
    model = llama()
    extra = torch.nn.Parameter(torch.zeros(100_001))  # a partial last block, and above bitsandbytes' paging size
    params = [*model.parameters(), extra]
    theirs = bnb.optim.AdamW8bit(params, **HYPER)
    ours = AdamW8bit([torch.nn.Parameter(p.detach().clone()) for p in params], **HYPER)
    for optimizer in (theirs, ours):
        for p in [q for group in optimizer.param_groups for q in group["params"]]:
            p.grad = torch.ones_like(p)
        optimizer.step()
    storages = {v.data_ptr(): v.nbytes for s in theirs.state.values() for v in s.values() if torch.is_tensor(v)}
    assert ours.state_bytes == sum(storages.values()) == optimizer_state_bytes([p.numel() for p in params],
                                                                               "adamw8bit").state_bytes


def test_first_step_equals_bitsandbytes_and_codes_differ_only_by_its_rounding_table(bnb):
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(70_000, generator=generator)
    g = torch.randn(70_000, generator=generator) * torch.rand(70_000, generator=generator) ** 4  # a wide range
    ours, theirs, table = (torch.nn.Parameter(w.clone()) for _ in range(3))
    optimizers = [AdamW8bit([ours], **HYPER), bnb.optim.AdamW8bit([theirs], **HYPER),
                  TableRoundingAdamW8bit([table], **HYPER)]
    for p, optimizer in zip((ours, theirs, table), optimizers):
        p.grad = g.clone()
        optimizer.step()
    assert torch.equal(ours, theirs) and torch.equal(table, theirs)  # the update uses the exact moments
    mine, reference, emulated = (optimizer.state[p] for optimizer, p in zip(optimizers, (ours, theirs, table)))
    for name, index in (("exp_avg", "1"), ("exp_avg_sq", "2")):
        assert torch.equal(mine[f"{name}_absmax"], reference[f"absmax{index}"])
        assert torch.equal(emulated[f"{name}_codes"], reference[f"state{index}"])  # bit for bit, with its table
        same = (mine[f"{name}_codes"] == reference[f"state{index}"]).float().mean()
        assert same > (0.85 if name == "exp_avg" else 0.5)  # measured on these wide-ranged values: 0.89, 0.57
    # Where the codes differ, ours is the nearer level (the table can be a few levels off near zero).
    m_exact = 0.1 * g
    absmax = reference["absmax1"].repeat_interleave(256)[: g.numel()]
    code = dynamic_map(True)
    ours_off = (code[mine["exp_avg_codes"].long()] * absmax - m_exact).abs()
    theirs_off = (code[reference["state1"].long()] * absmax - m_exact).abs()
    assert bool((ours_off <= theirs_off * (1 + 1e-5) + 1e-12).all())


def test_20_steps_stay_close_to_bitsandbytes_and_to_32bit_adamw(bnb):
    """With bitsandbytes' rounding table ours follows its run (the only other difference: m by lerp, as torch,
    against its multiply-add); with nearest rounding and the floor on v it is as close to AdamW."""
    start, table, theirs, ours, reference = (llama() for _ in range(5))
    train(table, TableRoundingAdamW8bit(table.parameters(), **HYPER), STEPS)
    train(theirs, bnb.optim.AdamW8bit(theirs.parameters(), **HYPER), STEPS)
    train(ours, AdamW8bit(ours.parameters(), **HYPER), STEPS)
    train(reference, torch.optim.AdamW(reference.parameters(), **HYPER), STEPS)
    assert relative_distance(table, theirs, start) < 0.02  # measured: 0.0036
    assert relative_distance(theirs, reference, start) < 0.15  # measured: 0.048
    assert relative_distance(ours, reference, start) < 0.15  # measured: 0.061


# ----- arguments --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr must be >= 0"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be in \[0, 1\)"),
        ({"eps": 0}, ValueError, "eps must be > 0"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay must be a float"),
        ({"blocksize": 100}, ValueError, "blocksize must be one of"),
        ({"min_8bit_size": 0}, ValueError, "min_8bit_size must be a positive int"),
        ({"min_8bit_size": 4096.0}, ValueError, "min_8bit_size must be a positive int"),
        ({"v_floor": 1}, TypeError, "v_floor must be a bool"),
        ({"params": [{"params": [torch.nn.Parameter(torch.zeros(3))], "optim_bits": 16}]}, ValueError,
         "optim_bits must be 8 or 32"),
    ],
)
def test_bad_arguments_raise_errors_naming_them(kwargs, error, match):
    kwargs = {"params": [torch.nn.Parameter(torch.zeros(3))], **kwargs}
    with pytest.raises(error, match=match):
        AdamW8bit(**kwargs)


def test_bad_parameters_and_gradients_raise():
    with pytest.raises(TypeError, match="float32, bfloat16 or float16 parameters"):
        AdamW8bit([torch.zeros(3, dtype=torch.float64)])
    p = torch.nn.Parameter(torch.zeros(5000))
    optimizer = AdamW8bit([p])
    p.grad = torch.zeros(5000).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


def test_moments_before_the_first_step_are_zero_and_blocks_of_the_state_rebuild():
    p = torch.nn.Parameter(torch.randn(5000))
    optimizer = AdamW8bit([p])
    m, v = optimizer.moments(p)
    assert not m.any() and not v.any() and m.shape == p.shape
    p.grad = torch.randn(5000)
    optimizer.step()
    state = optimizer.state[p]
    rebuilt = dequantize_blockwise_8bit(state["exp_avg_codes"], Blockwise8bitState(
        state["exp_avg_absmax"], dynamic_map(True), 256, (5000,), torch.float32))
    assert torch.equal(optimizer.moments(p)[0], rebuilt)
