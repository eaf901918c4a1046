"""Optimizer-state offload: AdamW whose state lives in host memory and visits the device a page at a time.

This is *not* what bitsandbytes' paged optimizers do; it is their worst case, made visible. A paged optimizer
(QLoRA, Dettmers et al. 2023, section 3) allocates its state tensors of at least 1e5 elements in CUDA unified
memory (bitsandbytes ``Optimizer8bit.get_state_buffer`` -> ``functional.get_paged`` -> ``cudaMallocManaged``)
and prefetches each one to the GPU before its update (``Optimizer8bit.prefetch_state`` ->
``cudaMemPrefetchAsync``). The state lives on the GPU while it fits and nothing moves; only when the GPU runs
out of memory does the driver evict pages to host RAM, and they come back when the next update touches them.

``OffloadedAdamW`` moves the whole state out and back at *every* step, with explicit copies that can be read
and counted: the optimizer-state offload of ZeRO-Offload (Ren et al. 2021), on one device. Its updates are
torch.optim.AdamW's, operation for operation. ``PagedAdamW`` is its former name, kept as a deprecated alias.
``optimizer_state_bytes`` gives the state sizes of the common optimizers and where they live; the memory
timeline lives in ``paging_timeline`` (figures in ``paging_plots``); this module re-exports both.

Left out: AMSGrad, maximize, sparse gradients, overlapping the copies of one page with the update of the
previous one, and unified memory itself (it needs CUDA: ``benchmarks/paging_gpu.py`` measures it on a GPU).
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch

from qlora_lessons.adamw import adamw_update_, check_adamw_hyperparameters
from qlora_lessons.paging_plots import plot_memory_timeline
from qlora_lessons.paging_state import PAGE_BYTES, OptimizerStateBytes, format_gb, optimizer_state_bytes
from qlora_lessons.paging_timeline import (
    MemoryEvent,
    MemoryTimeline,
    count_saved_activations,
    record_memory_timeline,
    simulate_eviction,
)

__all__ = [
    "PAGE_BYTES",
    "MemoryEvent",
    "MemoryTimeline",
    "OptimizerStateBytes",
    "OffloadedAdamW",
    "PagedAdamW",
    "PagingTraffic",
    "count_saved_activations",
    "optimizer_state_bytes",
    "plot_memory_timeline",
    "record_memory_timeline",
    "simulate_eviction",
]


@dataclass(frozen=True)
class PagingTraffic:
    """What ``OffloadedAdamW`` moved between host and device memory since it was created (or reset)."""

    bytes_to_device: int
    bytes_to_host: int
    pages_to_device: int
    pages_to_host: int

    def __repr__(self) -> str:
        return (
            f"PagingTraffic(to device: {format_gb(self.bytes_to_device)} in {self.pages_to_device} pages, "
            f"to host: {format_gb(self.bytes_to_host)} in {self.pages_to_host} pages)"
        )


class OffloadedAdamW(torch.optim.Optimizer):
    """AdamW whose state lives in host memory and visits the device one page at a time during ``step()``.

    Optimizer-state offload: every step copies all of m and v to the device and back, page by page (what a
    paged optimizer does only under memory pressure, and then only for the pages the driver evicted).

    The update is torch.optim.AdamW's (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
    Algorithm 2), in torch's order of operations, for step t, gradient g and parameter W:
        W <- W * (1 - lr * weight_decay)
        m <- lerp(m, g, 1 - beta1)                  (= beta1 * m + (1 - beta1) * g)
        v <- v * beta2 + (1 - beta2) * g * g
        W <- W - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    Every line is elementwise, so updating a page of elements at a time gives the same numbers.

    The state of all parameters is laid out as two flat host tensors, m and v, of n_params elements
    (pinned when the parameters are on CUDA, so copies can run asynchronously). A page is a range of
    ``page_bytes // (2 * itemsize)`` consecutive elements; it may cover the end of one parameter and the
    start of the next, or part of one. Per page: copy m and v to a device buffer, update, copy back.
    With parameters on the CPU the "device" buffer is another CPU tensor: the copies and counts are
    real, only the host-device link is not.
    ``state[p]["exp_avg"]`` is a view of the host tensor, so ``state_dict()`` reads like AdamW's.

    Shapes: host state (n_params,) twice; device page buffer (page elements,) twice.
    Example: 10 float32 parameters, ``page_bytes=32`` -> pages of 4 elements: 3 pages per step, device
    buffer 32 bytes, host state 80 bytes, 80 bytes moved each way per step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        page_bytes: int = PAGE_BYTES,
    ) -> None:
        defaults = check_adamw_hyperparameters(lr, betas, eps, weight_decay)
        if isinstance(page_bytes, bool) or not isinstance(page_bytes, int):
            raise TypeError(f"page_bytes must be an int, got {type(page_bytes).__name__} {page_bytes!r}")
        if page_bytes <= 0:
            raise ValueError(f"page_bytes must be > 0, got {page_bytes!r}")
        self.page_bytes = page_bytes
        self._host: tuple[torch.Tensor, ...] = ()  # flat m and v in host memory (empty before the first step)
        self._page: tuple[torch.Tensor, ...] = ()  # one page of m and v on the device (empty before)
        self._segments: list[tuple[dict, torch.Tensor, int]] = []  # (group, parameter, offset in flat state)
        self._offsets: list[int] = []
        self.reset_traffic()
        super().__init__(params, defaults)
        self.page_elements  # noqa: B018 - raises now if a page cannot hold one element

    def add_param_group(self, param_group: dict) -> None:
        """Add a group before the first step (the flat host state is laid out at the first step)."""
        if self._host:
            raise RuntimeError("OffloadedAdamW lays out its host state at the first step; add parameter groups "
                               "before it")
        params = param_group["params"]
        params = [params] if torch.is_tensor(params) else list(params)
        if not params:
            raise ValueError("a parameter group of OffloadedAdamW needs at least one parameter")
        first = self.param_groups[0]["params"][0] if self.param_groups else params[0]
        for p in params:
            if not p.is_floating_point():
                raise TypeError(f"OffloadedAdamW needs floating-point parameters, got dtype {p.dtype}")
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError(
                    f"OffloadedAdamW needs all parameters on one device with one dtype, got {p.dtype} on {p.device} "
                    f"and {first.dtype} on {first.device}"
                )
            if not p.is_contiguous():
                raise ValueError(f"OffloadedAdamW needs contiguous parameters, got one of shape {tuple(p.shape)}")
        super().add_param_group({**param_group, "params": params})

    @property
    def page_elements(self) -> int:
        """Elements of each parameter state per page: page_bytes // (2 moments * bytes per element)."""
        itemsize = self.param_groups[0]["params"][0].element_size()
        elements = self.page_bytes // (2 * itemsize)
        if elements == 0:
            raise ValueError(f"page_bytes={self.page_bytes} holds no element: it must be >= {2 * itemsize}")
        return elements

    @property
    def device_state_bytes(self) -> int:
        """Bytes of optimizer state resident on the device: one page buffer (0 before the first step)."""
        return sum(t.nbytes for t in self._page)

    @property
    def host_state_bytes(self) -> int:
        """Bytes of optimizer state in host memory: m and v for every parameter (0 before the first step)."""
        return sum(t.nbytes for t in self._host)

    @property
    def traffic(self) -> PagingTraffic:
        """Bytes and pages moved each way since creation or the last ``reset_traffic()``."""
        return self._traffic

    def reset_traffic(self) -> None:
        """Set the traffic counters to zero."""
        self._traffic = PagingTraffic(0, 0, 0, 0)

    def _lay_out_host_state(self) -> None:
        params = [(group, p) for group in self.param_groups for p in group["params"]]
        first = params[0][1]
        offsets = [0]
        for _, p in params:
            offsets.append(offsets[-1] + p.numel())
        pin = first.device.type == "cuda"
        self._host = tuple(torch.zeros(offsets[-1], dtype=first.dtype, pin_memory=pin) for _ in range(2))
        page_len = min(self.page_elements, offsets[-1])
        self._page = tuple(torch.empty(page_len, dtype=first.dtype, device=first.device) for _ in range(2))
        self._segments = [(group, p, offset) for (group, p), offset in zip(params, offsets[:-1], strict=True)]
        self._offsets = offsets[:-1]  # sorted start of each parameter in the flat state, for bisect
        for _, p, offset in self._segments:
            m, v = (host[offset : offset + p.numel()].view_as(p) for host in self._host)
            self.state[p] = {"step": torch.tensor(0.0), "exp_avg": m, "exp_avg_sq": v}

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient, page by page."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._host:
            self._lay_out_host_state()
        for _, p, _ in self._segments:
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError("OffloadedAdamW does not support sparse gradients")
                self.state[p]["step"] += 1
        total, per_page = self._host[0].numel(), self.page_elements
        for start in range(0, total, per_page):
            stop = min(start + per_page, total)
            # The parameters this page covers: from the one holding element `start` to the one holding `stop - 1`.
            first = bisect.bisect_right(self._offsets, start) - 1
            last = bisect.bisect_right(self._offsets, stop - 1) - 1
            pieces = [s for s in self._segments[first : last + 1] if s[1].grad is not None]
            if pieces:
                self._update_page(start, stop, pieces)
        return loss

    def _update_page(self, start: int, stop: int, pieces: list[tuple[dict, torch.Tensor, int]]) -> None:
        """Load elements [start, stop) of m and v to the device, update the parameters there, store them back."""
        m_page, v_page = (buffer[: stop - start] for buffer in self._page)
        m_page.copy_(self._host[0][start:stop], non_blocking=True)  # 1. load the page to the device
        v_page.copy_(self._host[1][start:stop], non_blocking=True)
        for group, p, offset in pieces:  # 2. update the parameters (or parts of them) the page covers
            lo, hi = max(start, offset), min(stop, offset + p.numel())  # flat indices of this piece
            self._update(
                group,
                p.view(-1)[lo - offset : hi - offset],
                cast(torch.Tensor, p.grad).reshape(-1)[lo - offset : hi - offset],  # pieces have gradients
                m_page[lo - start : hi - start],
                v_page[lo - start : hi - start],
                self.state[p]["step"].item(),
            )
        self._host[0][start:stop].copy_(m_page)  # 3. store the page back in host memory (waits for the copy)
        self._host[1][start:stop].copy_(v_page)
        moved = m_page.nbytes + v_page.nbytes
        self._traffic = PagingTraffic(
            self._traffic.bytes_to_device + moved,
            self._traffic.bytes_to_host + moved,
            self._traffic.pages_to_device + 1,
            self._traffic.pages_to_host + 1,
        )

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict (this optimizer's or torch.optim.AdamW's) into the host layout."""
        super().load_state_dict(state_dict)
        loaded = {p: dict(s) for p, s in self.state.items()}
        self._lay_out_host_state()
        for p, s in loaded.items():
            self.state[p]["step"] = torch.as_tensor(s["step"], dtype=torch.float32).clone()
            self.state[p]["exp_avg"].copy_(s["exp_avg"])
            self.state[p]["exp_avg_sq"].copy_(s["exp_avg_sq"])

    @staticmethod
    def _update(group: dict, param, grad, exp_avg, exp_avg_sq, step: float) -> None:
        """torch.optim.adam._single_tensor_adam with decoupled weight decay, line for line."""
        adamw_update_(param, grad, exp_avg, exp_avg_sq, step=step, lr=group["lr"], betas=group["betas"],
                      eps=group["eps"], weight_decay=group["weight_decay"])


class PagedAdamW(OffloadedAdamW):
    """Deprecated name of ``OffloadedAdamW``: it offloads the state every step, which bitsandbytes' paged
    optimizers do not (see the module docstring). Warns with a DeprecationWarning, then behaves the same."""

    def __init__(self, *args, **kwargs) -> None:
        warnings.warn(
            "qlora_lessons.PagedAdamW is now OffloadedAdamW: it copies the state between host and device every "
            "step (optimizer-state offload); bitsandbytes' paged optimizers keep it on the GPU until memory runs short",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
