"""A memory timeline of training: device-resident bytes by category, event by event, against a budget.

At each event of a training step the device holds
    total = weights + gradients + optimizer state + activations
    after forward:   weights + state (from the last step) + activations saved for backward
    after backward:  weights + gradients + state            (the saved activations are freed)
    after step:      weights + gradients + state            (AdamW's state appears at the first step)
A long-sequence batch multiplies the activations; with AdamW's 8 bytes of state per parameter always
resident, that batch is where a run crosses its budget. ``simulate_eviction`` replays a timeline as a paged
optimizer would live it (QLoRA section 3): the state stays resident until an event overflows the budget,
then the driver evicts up to the evictable (unified-memory) bytes of state to host RAM, and the next step
pages them back. An offloaded optimizer (``OffloadedAdamW``) keeps one page resident at every event.

On CPU the timeline accounts the bytes a device would hold: tensor sizes, the optimizer's resident state
(``device_state_bytes`` for an offloaded optimizer, else every state tensor), and activations counted with
``torch.autograd.graph.saved_tensors_hooks`` (each saved storage once, parameters excluded). On CUDA each
event also records ``torch.cuda.memory_allocated()``, what the allocator really holds.

Left out: transient peaks inside forward and backward (buffers freed before the event), the CUDA context,
allocator fragmentation and the caching allocator's reserved-but-unused memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from qlora_lessons.paging_state import format_gb

CATEGORIES = ("weights", "gradients", "optimizer_state", "activations")


@dataclass(frozen=True)
class MemoryEvent:
    """Device-resident bytes by category at one event. On CUDA, ``measured`` is what the allocator holds at
    the event and ``measured_peak`` the most it held since the previous event (None elsewhere). ``evicted``:
    bytes of optimizer state a paged optimizer has in host memory at this event (not part of ``total``)."""

    label: str
    weights: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    measured: int | None = None
    measured_peak: int | None = None
    evicted: int = 0

    @property
    def total(self) -> int:
        """weights + gradients + optimizer_state + activations."""
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def __repr__(self) -> str:
        parts = ", ".join(f"{name} {format_gb(getattr(self, name))}" for name in CATEGORIES)
        measured = "" if self.measured is None else f", measured {format_gb(self.measured)}"
        if self.measured_peak is not None:
            measured += f", measured peak {format_gb(self.measured_peak)}"
        if self.evicted:
            measured += f", evicted to host {format_gb(self.evicted)}"
        return f"MemoryEvent({self.label!r}: {format_gb(self.total)} = {parts}{measured})"


class MemoryTimeline:
    """Events of device memory through training, with an optional budget (bytes) to compare against.

    Example: ``t = MemoryTimeline(budget_bytes=100)``; ``t.record("forward 0", weights=40, activations=70)``;
    ``t.peak_bytes -> 110``; ``t.over_budget() -> ["forward 0"]``.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        if budget_bytes is not None:
            _check_bytes("budget_bytes", budget_bytes)
        self.budget_bytes = budget_bytes
        self._events: list[MemoryEvent] = []

    def record(
        self, label: str, measured: int | None = None, measured_peak: int | None = None, **bytes_by_category: int
    ) -> MemoryEvent:
        """Add an event: ``record("step 0", weights=..., gradients=..., optimizer_state=..., activations=...)``."""
        if not isinstance(label, str):
            raise TypeError(f"label must be a str, got {type(label).__name__}")
        for name, value in bytes_by_category.items():
            if name not in CATEGORIES:
                raise ValueError(f"unknown category {name!r}; the categories are {CATEGORIES}")
            _check_bytes(name, value)
        for name, optional in (("measured", measured), ("measured_peak", measured_peak)):
            if optional is not None:
                _check_bytes(name, optional)
        event = MemoryEvent(label, measured=measured, measured_peak=measured_peak, **bytes_by_category)
        self._events.append(event)
        return event

    @property
    def events(self) -> tuple[MemoryEvent, ...]:
        return tuple(self._events)

    @property
    def peak(self) -> MemoryEvent:
        """The event with the most bytes (the first one, on a tie)."""
        if not self._events:
            raise ValueError("the timeline has no events yet")
        return max(self._events, key=lambda e: e.total)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total

    def over_budget(self, budget_bytes: int | None = None) -> list[str]:
        """Labels of the events whose total exceeds the budget (this timeline's, unless one is given)."""
        budget = self.budget_bytes if budget_bytes is None else _check_bytes("budget_bytes", budget_bytes)
        if budget is None:
            raise ValueError("no budget: pass budget_bytes here or to MemoryTimeline(budget_bytes=...)")
        return [e.label for e in self._events if e.total > budget]

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        budget = "" if self.budget_bytes is None else f", budget {format_gb(self.budget_bytes)}"
        if not self._events:
            return f"MemoryTimeline(no events{budget})"
        peak = self.peak
        return f"MemoryTimeline({len(self)} events, peak {format_gb(peak.total)} at {peak.label!r}{budget})"


def simulate_eviction(timeline: MemoryTimeline, evictable_bytes: int, budget_bytes: int | None = None
                      ) -> MemoryTimeline:
    """The timeline as a paged optimizer lives it: optimizer state evicted to host only where the budget overflows.

    At each event: overflow = max(0, total - budget); evicted = min(overflow, evictable_bytes, optimizer_state);
    the event keeps optimizer_state - evicted on the device. An event that still overflows (overflow > evicted)
    is an out-of-memory even with paging. Every other event is unchanged: in the normal case nothing moves.
    A model of the CUDA driver's eviction (QLoRA section 3), not a measurement: on a GPU,
    ``benchmarks/paging_gpu.py`` observes the real thing with ``torch.cuda.mem_get_info``.
    Shapes: a timeline of n events -> a new timeline of n events (same labels and budget).
    Example: events of 110 and 90 bytes, 30 of them state, budget 100, 30 evictable -> the first keeps 20 bytes
    of state (10 evicted), the second is unchanged.
    """
    if not isinstance(timeline, MemoryTimeline):
        raise TypeError(f"timeline must be a MemoryTimeline, got {type(timeline).__name__}")
    _check_bytes("evictable_bytes", evictable_bytes)
    budget = timeline.budget_bytes if budget_bytes is None else _check_bytes("budget_bytes", budget_bytes)
    if budget is None:
        raise ValueError("no budget: pass budget_bytes here or to MemoryTimeline(budget_bytes=...)")
    paged = MemoryTimeline(budget)
    for e in timeline.events:
        evicted = min(max(0, e.total - budget), evictable_bytes, e.optimizer_state)
        paged._events.append(replace(e, optimizer_state=e.optimizer_state - evicted, evicted=evicted))
    return paged


def _check_bytes(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes, got {value!r}")
    return value


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def count_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage once (tied weights count once).

    Example: ``Linear(8, 16)`` in float32 -> (8 * 16 + 16) * 4 = 576 bytes."""
    storages = {_storage_key(t): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
    return sum(storages.values())


def count_gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients the parameters hold now (0 after ``zero_grad(set_to_none=True)``)."""
    return sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)


def count_optimizer_device_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state on the device: an offloaded optimizer's ``device_state_bytes``, else every state
    tensor except the step counters (torch keeps them as CPU scalars), each storage once."""
    if hasattr(optimizer, "device_state_bytes"):
        return int(optimizer.device_state_bytes)
    storages = {
        _storage_key(value): value.untyped_storage().nbytes()
        for state in optimizer.state.values()
        for key, value in state.items()
        if torch.is_tensor(value) and key != "step"
    }
    return sum(storages.values())


class count_saved_activations:  # noqa: N801 - used like a function: `with count_saved_activations(model) as c:`
    """Count the bytes autograd saves for backward inside the block: ``c.bytes`` after the block.

        activations = sum of nbytes over the distinct storages saved for backward, parameters excluded
    Each saved storage is counted once; the model's parameters and buffers (also saved, by matmuls) are
    weights, not activations, and are left out. Uses ``torch.autograd.graph.saved_tensors_hooks``.
    Shapes: any model and inputs -> one int (bytes).
    Example: ``Linear(8, 16) -> ReLU -> Linear(16, 4)`` on x (5, 8), loss ``out.square().sum()``: saved are
    x, the ReLU output (saved twice, one storage) and the output: (40 + 80 + 20) * 4 = 560 bytes.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._exclude = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
        self._storages: dict[tuple[str, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._exclude:
            self._storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> count_saved_activations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def record_memory_timeline(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[torch.Tensor],
    *,
    budget_bytes: int | None = None,
    progress: bool = True,
) -> MemoryTimeline:
    """Train a causal LM on ``batches`` of token ids and record device memory after each forward, backward, step.

    Loss: ``model(input_ids=ids, labels=ids).loss`` (a Hugging Face causal LM shifts the labels itself).
    Shapes: each batch (B, T) int64 token ids; T may differ between batches (a long-sequence batch).
    Example: 3 batches -> 9 events, "forward 0 (T=32)", "backward 0 (T=32)", "step 0 (T=32)", ...
    The model is put in train mode and trained: pass a copy to keep the original.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    model_params = {id(p) for p in model.parameters()}
    if not all(id(p) in model_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer must hold the parameters of this model (was it built on another copy?)")
    for i, ids in enumerate(batches):
        if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"batches[{i}] must be a (B, T) int64 tensor of token ids, got {ids!r:.60}")
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    timeline = MemoryTimeline(budget_bytes)

    def record(label: str, activations: int = 0) -> None:
        measured = peak = None
        if on_cuda:  # what the allocator holds now, and the most it held since the previous event
            measured, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        timeline.record(
            label,
            measured=measured,
            measured_peak=peak,
            weights=count_weight_bytes(model),
            gradients=count_gradient_bytes(model),
            optimizer_state=count_optimizer_device_bytes(optimizer),
            activations=activations,
        )

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    for i, ids in enumerate(tqdm(batches, desc="training steps", disable=not progress)):
        ids = ids.to(device)
        optimizer.zero_grad(set_to_none=True)
        with count_saved_activations(model) as saved:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        record(f"forward {i} (T={ids.shape[1]})", activations=saved.bytes)
        loss.backward()
        del loss  # the graph and its saved activations are freed by backward; drop the last reference
        record(f"backward {i} (T={ids.shape[1]})")
        optimizer.step()
        record(f"step {i} (T={ids.shape[1]})")
    return timeline
