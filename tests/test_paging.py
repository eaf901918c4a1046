"""Tests of qlora_lessons.paging: OffloadedAdamW against torch.optim.AdamW (and its deprecated name PagedAdamW),
state sizes and the paged share against torch and bitsandbytes, the memory timeline's accounting, the eviction
model, and benchmarks/paging_gpu.py without CUDA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora_lessons.paging import (
    MemoryTimeline,
    OffloadedAdamW,
    PagedAdamW,
    count_saved_activations,
    optimizer_state_bytes,
    plot_memory_timeline,
    record_memory_timeline,
    simulate_eviction,
)
from qlora_lessons.paging_state import MIN_PAGED_SIZE, format_gb, lora_adapter_shapes

from tiny_models import tiny_llama

VOCAB = 128
STEPS = 20
HYPER = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def llama() -> torch.nn.Module:
    """A 2-layer Llama with room for the long-sequence batches of the timeline tests."""
    return tiny_llama(vocab_size=VOCAB, max_position_embeddings=256)


def batch(seed: int, length: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))  # (B, T)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for step in range(steps):
        ids = batch(step % 4)
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def adamw_run():
    """torch.optim.AdamW on a tiny Llama for 20 steps: initial weights, and each step's gradients and weights."""
    model = llama()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), **HYPER)
    grads, weights = [], []
    for step in range(STEPS):
        ids = batch(step % 4)
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    return initial, grads, weights, optimizer


# Pages of 500 elements (smaller than every matrix, larger than the 64-element norms, so pages straddle
# tensors), 6144 (between the 4096- and 8192-element matrices), 16384 (larger than every tensor), one page.
@pytest.mark.parametrize("page_bytes", [4000, 6144 * 8, 16384 * 8, 10**9])
def test_offloaded_adamw_equals_torch_adamw_on_a_llama_over_20_steps(adamw_run, page_bytes):
    initial, grads, weights, reference = adamw_run
    params = [torch.nn.Parameter(w.clone()) for w in initial]
    optimizer = OffloadedAdamW(params, **HYPER, page_bytes=page_bytes)
    n_params = sum(p.numel() for p in params)
    worst = 0.0
    for step in range(STEPS):
        for p, g in zip(params, grads[step], strict=True):
            p.grad = g.clone()
        optimizer.step()
        worst = max(worst, max((p - w).abs().max().item() for p, w in zip(params, weights[step], strict=True)))
    assert worst <= 1e-6
    # The same operations in the same order: equal to the last bit, weights and state.
    assert all(torch.equal(p, w) for p, w in zip(params, weights[-1], strict=True))
    for p, q in zip(params, [q for g in reference.param_groups for q in g["params"]], strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p][key], reference.state[q][key]), key
    per_page = page_bytes // 8
    assert optimizer.traffic.pages_to_device == STEPS * math.ceil(n_params / per_page)
    assert optimizer.traffic.bytes_to_device == optimizer.traffic.bytes_to_host == STEPS * 8 * n_params
    assert optimizer.device_state_bytes == 8 * min(per_page, n_params)
    assert optimizer.host_state_bytes == 8 * n_params


def test_offloaded_adamw_trains_a_llama_like_adamw_end_to_end():
    plain, paged = llama(), llama()
    train(plain, torch.optim.AdamW(plain.parameters(), **HYPER), STEPS)
    train(paged, OffloadedAdamW(paged.parameters(), **HYPER, page_bytes=6144 * 8), STEPS)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), paged.parameters(), strict=True))


def test_frozen_parameters_and_groups_follow_adamw():
    plain, paged = llama(), llama()
    for model in (plain, paged):
        model.model.embed_tokens.weight.requires_grad_(False)  # in the optimizer, but never gets a gradient

    def groups(model):
        decay = [p for n, p in model.named_parameters() if "norm" not in n]
        return [{"params": decay}, {"params": [p for n, p in model.named_parameters() if "norm" in n], "lr": 0.05}]

    reference = torch.optim.AdamW(groups(plain), **HYPER)
    optimizer = OffloadedAdamW(groups(paged), **HYPER, page_bytes=4000)
    train(plain, reference, 4)
    train(paged, optimizer, 4)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), paged.parameters(), strict=True))
    assert optimizer.state[paged.model.embed_tokens.weight]["step"].item() == 0
    assert torch.equal(paged.model.embed_tokens.weight, plain.model.embed_tokens.weight)


def test_loads_an_adamw_state_dict_and_continues_identically():
    plain, paged = llama(), llama()
    reference = torch.optim.AdamW(plain.parameters(), **HYPER)
    train(plain, reference, 3)
    paged.load_state_dict(plain.state_dict())
    optimizer = OffloadedAdamW(paged.parameters(), **HYPER, page_bytes=4000)
    optimizer.load_state_dict(reference.state_dict())
    train(plain, reference, 3)
    train(paged, optimizer, 3)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), paged.parameters(), strict=True))


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=4),
    page_elements=st.integers(1, 200),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_any_shapes_pages_and_dtypes_match_adamw(shapes, page_elements, dtype, lr, beta1, weight_decay, seed):
    generator = torch.Generator().manual_seed(seed)
    initial = [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in initial]
    theirs = [torch.nn.Parameter(t.clone()) for t in initial]
    hyper = {"lr": lr, "betas": (beta1, 0.999), "eps": 1e-8, "weight_decay": weight_decay}
    optimizer = OffloadedAdamW(ours, **hyper, page_bytes=page_elements * 2 * initial[0].element_size())
    reference = torch.optim.AdamW(theirs, **hyper)
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=generator).to(dtype)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr must be >= 0"),
        ({"lr": "0.1"}, TypeError, "lr must be a float"),
        ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
        ({"betas": (0.9, -0.1)}, ValueError, r"betas\[1\]"),
        ({"betas": (0.9,)}, TypeError, "betas must be a pair"),
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
        ({"page_bytes": 0}, ValueError, "page_bytes must be > 0"),
        ({"page_bytes": 4}, ValueError, "page_bytes=4 holds no element"),
        ({"page_bytes": 1.5}, TypeError, "page_bytes must be an int"),
    ],
)
def test_bad_arguments_raise_errors_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        OffloadedAdamW([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="one device with one dtype"):
        OffloadedAdamW([torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="contiguous"):
        OffloadedAdamW([torch.nn.Parameter(torch.zeros(3, 4).t())])
    with pytest.raises(TypeError, match="floating-point"):
        OffloadedAdamW([torch.zeros(3, dtype=torch.long)])
    p = torch.nn.Parameter(torch.zeros(3))
    optimizer = OffloadedAdamW([p])
    with pytest.raises(ValueError, match="one device with one dtype"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]})
    assert len(optimizer.param_groups) == 1  # the bad group was not added
    p.grad = torch.ones(3)
    optimizer.step()
    with pytest.raises(RuntimeError, match="before"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})


# ----- optimizer_state_bytes -------------------------------------------------------------------------------


def test_the_13b_model_needs_104_gb_of_adam_state():
    assert optimizer_state_bytes(13_000_000_000, "adamw").state_bytes == 104 * 10**9


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("adamw", lambda ps: torch.optim.AdamW(ps)),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
        ("sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ],
)
def test_state_bytes_equal_what_torch_allocates(name, make):
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (7, 4096, 300)]
    optimizer = make(params)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    allocated = sum(v.nbytes for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert optimizer_state_bytes([7, 4096, 300], name).state_bytes == allocated


def _bitsandbytes_state_bytes(optimizer_class, numels):
    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.randn(n)) for n in numels]
    optimizer = getattr(bnb.optim, optimizer_class)(params)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    storages = {v.data_ptr(): v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)}
    return sum(storages.values())  # the code tables are shared by all tensors: count each storage once


@pytest.mark.parametrize("numels", [[100], [4095, 4096], [4096, 5000, 70_000, 64], [1_000_000]])
def test_8bit_state_bytes_equal_what_bitsandbytes_allocates(numels):
    assert optimizer_state_bytes(numels, "adamw8bit").state_bytes == _bitsandbytes_state_bytes("AdamW8bit", numels)


def test_32bit_state_bytes_equal_bitsandbytes_adamw():
    assert optimizer_state_bytes([100, 5000], "adamw").state_bytes == _bitsandbytes_state_bytes("AdamW", [100, 5000])


def test_paged_state_is_resident_and_only_tensors_of_1e5_elements_are_evictable():
    plain = optimizer_state_bytes([99_999, 100_000], "adamw")
    paged = optimizer_state_bytes([99_999, 100_000], "paged_adamw")
    assert paged.state_bytes == paged.device_bytes == plain.device_bytes == 8 * 199_999 and paged.host_bytes == 0
    assert paged.evictable_bytes == 8 * 100_000 and plain.evictable_bytes == 0
    paged8 = optimizer_state_bytes([5000, 200_000], "paged_adamw8bit")
    assert paged8.state_bytes == optimizer_state_bytes([5000, 200_000], "adamw8bit").state_bytes == paged8.device_bytes
    assert paged8.evictable_bytes == 2 * 200_000  # only the uint8 codes of m and v are managed; absmax is not


def test_offloaded_state_sits_in_host_memory_but_one_page():
    plain = optimizer_state_bytes(1_000_000, "adamw")
    offloaded = optimizer_state_bytes(1_000_000, "offloaded_adamw", page_bytes=1001)
    assert offloaded.state_bytes == offloaded.host_bytes == plain.state_bytes == plain.device_bytes == 8_000_000
    assert plain.host_bytes == 0 and offloaded.device_bytes == 1000  # whole elements: 125 of 8 bytes
    assert optimizer_state_bytes(10, "offloaded_adamw", page_bytes=10**6).device_bytes == 80  # page > state
    assert offloaded.evictable_bytes == 0


def test_the_paging_rule_is_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    import inspect

    # get_state_buffer: "if not self.is_paged or p.numel() < 1e5: ordinary tensor, else F.get_paged".
    source = inspect.getsource(bnb.optim.optimizer.Optimizer8bit.get_state_buffer)
    assert "p.numel() < 1e5" in source and "F.get_paged" in source and MIN_PAGED_SIZE == 1e5


def test_adapter_shapes_follow_peft_and_count_like_lesson_02():
    from qlora_lessons.memory import count_lora_parameters, model_config
    from qlora_lessons.memory_models import load_config

    shapes = lora_adapter_shapes("llama-7b", 16)
    assert len(shapes) == 14 and shapes["q_proj.lora_A"] == (16, 4096) and shapes["down_proj.lora_B"] == (4096, 16)
    assert [n for n, (a, b) in shapes.items() if a * b >= MIN_PAGED_SIZE] == [
        "gate_proj.lora_B", "up_proj.lora_B", "down_proj.lora_A"]
    for preset, r in (("llama-7b", 64), ("llama-65b", 64), ("qwen2.5-0.5b", 8), ("mistral-7b", 16)):
        numels = [a * b for a, b in lora_adapter_shapes(preset, r).values()] * load_config(preset)["num_hidden_layers"]
        assert sum(numels) == count_lora_parameters(model_config(preset), r, "all-linear")
    assert list(lora_adapter_shapes("llama-7b", 8, ("q_proj", "v_proj"))) == [
        "q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"]
    with pytest.raises(ValueError, match="r must be a positive int"):
        lora_adapter_shapes("llama-7b", 0)


def test_paged_adamw_is_a_deprecated_name_of_offloaded_adamw():
    params = [torch.nn.Parameter(torch.ones(10))]
    with pytest.warns(DeprecationWarning, match="now OffloadedAdamW"):
        optimizer = PagedAdamW(params, lr=0.1, page_bytes=32)
    assert isinstance(optimizer, OffloadedAdamW)
    params[0].grad = torch.ones(10)
    optimizer.step()
    assert optimizer.traffic.pages_to_device == 3 and torch.allclose(params[0].detach(), torch.full((10,), 0.899))


def test_the_8bit_rule_is_per_tensor():
    # Two tensors of 4000 elements stay 32-bit; one of 8000 is 8-bit.
    assert optimizer_state_bytes([4000, 4000], "adamw8bit").state_bytes == 64_000
    assert optimizer_state_bytes(8000, "adamw8bit").state_bytes == 2 * (8000 + 4 * 32) + 2048


def test_state_bytes_repr_reads_in_gb():
    text = repr(optimizer_state_bytes(13_000_000_000, "offloaded_adamw"))
    assert "104.000 GB of state" in text and "0.00105 GB on the device" in text
    text = repr(optimizer_state_bytes(13_000_000_000, "paged_adamw"))
    assert "104.000 GB on the device, 0 GB in host memory, 104.000 GB evictable" in text
    assert format_gb(0) == "0 GB" and format_gb(24_576_000) == "0.0246 GB" and format_gb(208 * 10**9) == "208.000 GB"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((-1,), {}, ValueError, "n_params must be >= 0"),
        ((1.5,), {}, TypeError, "n_params must be an int"),
        ((True,), {}, TypeError, "n_params"),
        (([3, 2.0],), {}, TypeError, "n_params must hold ints"),
        ((10, "adam"), {}, ValueError, "optimizer must be one of"),
        ((10, "offloaded_adamw"), {"page_bytes": 7}, ValueError, "page_bytes must be >= 8"),
    ],
)
def test_state_bytes_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        optimizer_state_bytes(*args, **kwargs)


# ----- the memory timeline ---------------------------------------------------------------------------------


def test_saved_activations_are_counted_once_without_weights():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with count_saved_activations(model) as saved:
        model(x).square().sum()
    # Saved: x (by the first matmul), relu's output (by relu and by the second matmul: one storage),
    # the second layer's output (by square). The weights are saved too, and left out.
    assert saved.bytes == (5 * 8 + 5 * 16 + 5 * 4) * 4


def test_timeline_records_peaks_and_budget():
    timeline = MemoryTimeline(budget_bytes=100)
    timeline.record("forward 0", weights=40, activations=70)
    timeline.record("step 0", weights=40, gradients=40, optimizer_state=10)
    assert timeline.peak.label == "forward 0" and timeline.peak_bytes == 110
    assert timeline.over_budget() == ["forward 0"] and timeline.over_budget(200) == []
    assert "peak 0.000000110 GB" in repr(timeline)
    with pytest.raises(ValueError, match="unknown category 'optimizer'"):
        timeline.record("x", optimizer=3)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        timeline.record("x", weights=-1)
    with pytest.raises(ValueError, match="no events"):
        MemoryTimeline().peak  # noqa: B018
    with pytest.raises(ValueError, match="no budget"):
        MemoryTimeline().over_budget()


def test_offloading_lowers_the_peak_by_the_state_minus_one_page_and_eviction_only_where_needed():
    page_bytes = 4000
    batches = [batch(0), batch(1), batch(2, length=128), batch(3)]  # one long-sequence batch
    plain_model, paged_model = llama(), llama()
    n_params = sum(p.numel() for p in plain_model.parameters())
    plain = record_memory_timeline(plain_model, torch.optim.AdamW(plain_model.parameters()), batches, progress=False)
    optimizer = OffloadedAdamW(paged_model.parameters(), page_bytes=page_bytes)
    paged = record_memory_timeline(paged_model, optimizer, batches, progress=False)

    long_forward = "forward 2 (T=128)"
    assert plain.peak.label == paged.peak.label == long_forward
    state = optimizer_state_bytes(n_params, "adamw").device_bytes  # 8 bytes per parameter, all resident
    page = optimizer_state_bytes(n_params, "offloaded_adamw", page_bytes=page_bytes).device_bytes  # one page
    assert plain.peak_bytes - paged.peak_bytes == state - page == 8 * n_params - 4000

    events = {e.label: e for e in plain.events}
    assert events["forward 0 (T=16)"].optimizer_state == 0 and events["step 0 (T=16)"].optimizer_state == state
    assert events["backward 0 (T=16)"].gradients == 4 * n_params and events["forward 1 (T=16)"].gradients == 0
    buffers = sum(b.nbytes for b in plain_model.buffers())  # the rotary embedding's inverse frequencies
    assert all(e.weights == 4 * n_params + buffers for e in plain.events)
    assert events[long_forward].activations > 4 * events["forward 1 (T=16)"].activations
    assert all(e.measured is None for e in plain.events)  # no allocator to read on CPU

    # A budget the long batch breaks only when the whole state is resident.
    budget = events[long_forward].weights + events[long_forward].activations + state // 2
    assert plain.over_budget(budget) == [long_forward] and paged.over_budget(budget) == []

    # A paged optimizer, modelled: all of the state stays resident but where the budget overflows.
    modelled = simulate_eviction(plain, state, budget)
    assert modelled.over_budget() == [] and [e.label for e in modelled.events if e.evicted] == [long_forward]
    assert {e.label: e.evicted for e in modelled.events}[long_forward] == events[long_forward].total - budget
    assert simulate_eviction(plain, state // 4, budget).over_budget() == [long_forward]  # too little to evict
    hatched = [p for p in plot_memory_timeline(modelled).axes[0].patches if p.get_hatch() == "///"]
    assert len(hatched) == len(modelled) and sum(p.get_height() > 0 for p in hatched) == 1  # the evicted state

    paged.budget_bytes = budget
    figure = plot_memory_timeline(plain, paged, titles=["AdamW", "OffloadedAdamW"])
    assert len(figure.axes) == 2 and [ax.get_title() for ax in figure.axes] == ["AdamW", "OffloadedAdamW"]
    assert any(line.get_linestyle() == "--" for line in figure.axes[1].get_lines())  # the budget line
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_trace_rejects_an_optimizer_of_another_model():
    model = llama()
    with pytest.raises(ValueError, match="parameters of this model"):
        record_memory_timeline(model, torch.optim.AdamW(copy.deepcopy(model).parameters()), [batch(0)], progress=False)
    with pytest.raises(ValueError, match=r"batches\[0\] must be a \(B, T\) int64"):
        record_memory_timeline(model, torch.optim.AdamW(model.parameters()), [torch.zeros(3)], progress=False)


def test_plot_draws_the_allocator_readings_when_there_are_some():
    import matplotlib.pyplot as plt

    timeline = MemoryTimeline(budget_bytes=2_000_000)
    timeline.record("forward 0", measured=1_500_000, measured_peak=1_800_000, weights=1_000_000, activations=400_000)
    timeline.record("step 0", measured=1_200_000, measured_peak=1_600_000, weights=1_000_000, gradients=100_000)
    figure = plot_memory_timeline(timeline)
    markers = {line.get_marker(): list(line.get_ydata()) for line in figure.axes[0].get_lines()}
    assert markers["."] == [1.5, 1.2] and markers["v"] == [1.8, 1.6]  # in MB
    assert figure.axes[0].get_ylabel() == "device memory (MB)"
    plt.close(figure)
    with pytest.raises(ValueError, match="one or more MemoryTimeline"):
        plot_memory_timeline(MemoryTimeline())


def test_budget_override_and_budget_slider():
    timeline = MemoryTimeline(budget_bytes=2_000_000)
    timeline.record("forward 0", weights=1_000_000, activations=1_500_000)
    timeline.record("step 0", weights=1_000_000, gradients=500_000)
    figure = plot_memory_timeline(timeline, budget_bytes=3_000_000)
    budget_lines = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in budget_lines] == [[3.0, 3.0]]  # MB, the override
    with pytest.raises(ValueError, match="budget_bytes must be a non-negative int"):
        plot_memory_timeline(timeline, budget_bytes=-1)

    from qlora_lessons.paging_plots import budget_slider

    widget = budget_slider(timeline, titles=["AdamW"])
    slider, caption, _ = widget.children
    assert slider.value == 2.0 and "over the budget at forward 0" in caption.value
    slider.value = 2.6  # MB: above the 2.5 MB peak
    assert "stays under the budget" in caption.value and "peak 2.5 MB" in caption.value
    timeline.record("step 1", weights=1_000_000, gradients=500_000, optimizer_state=800_000)
    paged = budget_slider(timeline, titles=["AdamW"], evictable_bytes=800_000, budget_bytes=2_000_000)
    slider, caption, _ = paged.children
    # step 1 (2.3 MB) goes over with AdamW; the model evicts 0.3 MB of its state there. forward 0 has no state.
    assert "AdamW: peak 2.5 MB, over the budget at forward 0, step 1" in caption.value
    assert caption.value.endswith("paged (modelled): peak 2.5 MB, over the budget at forward 0")
    with pytest.raises(ValueError, match="one or more MemoryTimeline"):
        budget_slider()


def test_simulate_eviction_checks_its_arguments():
    timeline = MemoryTimeline()
    timeline.record("forward 0", weights=80, activations=30)
    timeline.record("step 0", weights=80, optimizer_state=30)
    paged = simulate_eviction(timeline, 30, budget_bytes=100)
    assert [e.evicted for e in paged.events] == [0, 10] and paged.events[1].optimizer_state == 20
    assert "evicted to host" in repr(paged.events[1]) and paged.budget_bytes == 100
    with pytest.raises(ValueError, match="no budget"):
        simulate_eviction(timeline, 30)
    with pytest.raises(TypeError, match="timeline must be a MemoryTimeline"):
        simulate_eviction([], 30, 100)
    with pytest.raises(ValueError, match="evictable_bytes must be >= 0"):
        simulate_eviction(timeline, -1, 100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_the_gpu_benchmark_imports_on_cpu_and_exits_2_with_a_message():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "paging_gpu.py")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs a CUDA GPU" in done.stderr and "nothing was run" in done.stderr and "Traceback" not in done.stderr
    import importlib.util

    spec = importlib.util.spec_from_file_location("paging_gpu", root / "benchmarks" / "paging_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing runs nothing
    control = {"outcome": "out of memory at the long batch's forward and backward"}
    paged = {"outcome": "survived", "outside_torch_before": 3 * 10**9, "outside_torch_after_backward": 10**9,
             "slack_bytes": 10**9}
    assert module.verdict(control, paged).startswith("paging shown")
    assert module.verdict({"outcome": "survived"}, paged).startswith("no claim")
    assert module.verdict(control, {**paged, "outside_torch_after_backward": 3 * 10**9}).startswith("paged survived")
