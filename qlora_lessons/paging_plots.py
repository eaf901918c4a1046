"""Figures for paged optimizers: the memory timeline as stacked bars against a device budget, and a slider
that moves the budget, says which events cross it and, given the evictable state, models a paged optimizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qlora_lessons.course_extra import course_import
from qlora_lessons.paging_state import format_gb
from qlora_lessons.paging_timeline import CATEGORIES, MemoryTimeline, simulate_eviction

if TYPE_CHECKING:
    import ipywidgets
    from matplotlib.figure import Figure


def plot_memory_timeline(*timelines: MemoryTimeline, titles: Sequence[str] | None = None,
                         budget_bytes: int | None = None) -> Figure:
    """Stacked bars of device bytes per event, one panel per timeline, with each timeline's budget as a line.

    State that a paged optimizer evicted to host memory (``MemoryEvent.evicted``) is drawn hatched on top.

    ``budget_bytes`` draws that budget in every panel instead of each timeline's own.
    Example: ``plot_memory_timeline(plain, offloaded, titles=["AdamW", "OffloadedAdamW"])`` -> a Figure of 2 panels.
    """
    plt = course_import("matplotlib.pyplot")

    if not timelines or not all(isinstance(t, MemoryTimeline) and len(t) for t in timelines):
        raise ValueError("plot_memory_timeline needs one or more MemoryTimeline with events")
    if titles is not None and len(titles) != len(timelines):
        raise ValueError(f"titles must have one entry per timeline ({len(timelines)}), got {len(titles)}")
    if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)
                                     or budget_bytes < 0):
        raise ValueError(f"budget_bytes must be a non-negative int, got {budget_bytes!r}")
    budgets = [t.budget_bytes if budget_bytes is None else budget_bytes for t in timelines]
    top = max(max(t.peak_bytes, b or 0, *(e.measured_peak or 0 for e in t.events)) for t, b in zip(timelines, budgets))
    scale, unit = (1e9, "GB") if top >= 1e9 else (1e6, "MB")
    fig, axes = plt.subplots(1, len(timelines), sharey=True, squeeze=False, figsize=(4.0 * len(timelines), 3.2))
    for k, (ax, timeline, budget) in enumerate(zip(axes[0], timelines, budgets, strict=True)):
        x = range(len(timeline))
        bottom = [0.0] * len(timeline)
        for name in CATEGORIES:
            heights = [getattr(e, name) / scale for e in timeline.events]
            ax.bar(x, heights, bottom=bottom, label=name.replace("_", " "), width=0.85)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        if any(e.evicted for e in timeline.events):  # a paged optimizer's state in host RAM: drawn, not counted
            ax.bar(x, [e.evicted / scale for e in timeline.events], bottom=bottom, width=0.85, fill=False,
                   hatch="///", edgecolor="tab:green", label="state evicted to host")
        for field, marker, label in (("measured", "k.", "allocated (CUDA)"), ("measured_peak", "kv", "peak (CUDA)")):
            values = [getattr(e, field) for e in timeline.events]
            if all(v is not None for v in values):
                ax.plot(x, [v / scale for v in values], marker, markersize=4, label=label)
        if budget is not None:
            ax.axhline(budget / scale, color="red", linestyle="--", label="device budget")
        ax.set_xticks(list(x), [e.label for e in timeline.events], rotation=90, fontsize="x-small")
        ax.set_title(titles[k] if titles else f"peak {format_gb(timeline.peak_bytes)}", fontsize="medium")
    axes[0][0].set_ylabel(f"device memory ({unit})")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize="x-small", loc="upper left")
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


def budget_slider(*timelines: MemoryTimeline, titles: Sequence[str] | None = None,
                  budget_bytes: int | None = None, evictable_bytes: int | None = None) -> ipywidgets.VBox:
    """A slider over the device budget (MB) that redraws the timelines and lists the events above it.

    With ``evictable_bytes``, a last panel "paged (modelled)" replays the first timeline through
    ``simulate_eviction`` at each budget: a paged optimizer's state leaves the device only where it must.

    The slider runs from 0 to 1.25 x the highest peak; it starts at ``budget_bytes`` (default: the first
    timeline's budget, else its peak). Caption per timeline: its peak and the events over the budget.
    Example: ``budget_slider(plain, offloaded, titles=["AdamW", "OffloadedAdamW"], evictable_bytes=n)`` -> a
    widget of three panels to display.
    Returns an ipywidgets VBox: the slider, the caption (HTML) and the figure.
    """
    widgets = course_import("ipywidgets")
    display = course_import("IPython.display").display

    if not timelines or not all(isinstance(t, MemoryTimeline) and len(t) for t in timelines):
        raise ValueError("budget_slider needs one or more MemoryTimeline with events")
    names = list(titles) if titles is not None else [f"timeline {k}" for k in range(len(timelines))]
    if evictable_bytes is not None:
        names.append("paged (modelled)")
    start = budget_bytes if budget_bytes is not None else timelines[0].budget_bytes or timelines[0].peak_bytes
    top = 1.25 * max(t.peak_bytes for t in timelines) / 1e6
    slider = widgets.FloatSlider(value=start / 1e6, min=0.0, max=top, step=top / 200, description="budget (MB)",
                                 continuous_update=False, readout_format=".1f")
    caption, picture = widgets.HTML(), widgets.Output()

    def show(megabytes: float) -> None:
        budget = int(megabytes * 1e6)
        shown = list(timelines)
        if evictable_bytes is not None:
            shown.append(simulate_eviction(timelines[0], evictable_bytes, budget))
        lines = []
        for name, timeline in zip(names, shown):
            over = timeline.over_budget(budget)
            verdict = f"over the budget at {', '.join(over)}" if over else "stays under the budget"
            lines.append(f"{name}: peak {timeline.peak_bytes / 1e6:.1f} MB, {verdict}")
        caption.value = "<br>".join(lines)
        picture.clear_output(wait=True)
        with picture:
            display(plot_memory_timeline(*shown, titles=names, budget_bytes=budget))

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return widgets.VBox([slider, caption, picture])
