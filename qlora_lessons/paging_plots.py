"""Figures for paged optimizers: the memory timeline as stacked bars against a device budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qlora_lessons.paging_state import format_gb
from qlora_lessons.paging_timeline import CATEGORIES, MemoryTimeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_memory_timeline(*timelines: MemoryTimeline, titles: Sequence[str] | None = None) -> Figure:
    """Stacked bars of device bytes per event, one panel per timeline, with each timeline's budget as a line.

    Example: ``plot_memory_timeline(plain, paged, titles=["AdamW", "PagedAdamW"])`` -> a Figure of 2 panels.
    """
    import matplotlib.pyplot as plt

    if not timelines or not all(isinstance(t, MemoryTimeline) and len(t) for t in timelines):
        raise ValueError("plot_memory_timeline needs one or more MemoryTimeline with events")
    if titles is not None and len(titles) != len(timelines):
        raise ValueError(f"titles must have one entry per timeline ({len(timelines)}), got {len(titles)}")
    top = max(max(t.peak_bytes, t.budget_bytes or 0, *(e.measured_peak or 0 for e in t.events)) for t in timelines)
    scale, unit = (1e9, "GB") if top >= 1e9 else (1e6, "MB")
    fig, axes = plt.subplots(1, len(timelines), sharey=True, squeeze=False, figsize=(4.0 * len(timelines), 3.2))
    for k, (ax, timeline) in enumerate(zip(axes[0], timelines, strict=True)):
        x = range(len(timeline))
        bottom = [0.0] * len(timeline)
        for name in CATEGORIES:
            heights = [getattr(e, name) / scale for e in timeline.events]
            ax.bar(x, heights, bottom=bottom, label=name.replace("_", " "), width=0.85)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for field, marker, label in (("measured", "k.", "allocated (CUDA)"), ("measured_peak", "kv", "peak (CUDA)")):
            values = [getattr(e, field) for e in timeline.events]
            if all(v is not None for v in values):
                ax.plot(x, [v / scale for v in values], marker, markersize=4, label=label)
        if timeline.budget_bytes is not None:
            ax.axhline(timeline.budget_bytes / scale, color="red", linestyle="--", label="device budget")
        ax.set_xticks(list(x), [e.label for e in timeline.events], rotation=90, fontsize=6)
        ax.set_title(titles[k] if titles else f"peak {format_gb(timeline.peak_bytes)}", fontsize=9)
    axes[0][0].set_ylabel(f"device memory ({unit})")
    axes[0][-1].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig
