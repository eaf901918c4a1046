"""Schematic figures: boxes and arrows that a lesson draws instead of describing in words.

Each function returns the matplotlib ``Figure`` it drew, so a notebook cell can show or save it.
Left out: anything with data in it (those plots live beside the concept they show).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qlora_lessons.course_extra import course_import


def plot_flow(steps: Sequence[tuple[str, str]], title: str = "", colors: Sequence[str] | None = None):
    """Draw boxes left to right joined by arrows; each step is ``(heading, detail)``.

    Example: ``plot_flow([("data", "840 questions"), ("model", "2.8M parameters")])`` -> two boxes, one arrow.
    """
    plt = course_import("matplotlib.pyplot")
    FancyBboxPatch = course_import("matplotlib.patches").FancyBboxPatch

    if len(steps) == 0:
        raise ValueError("steps is empty: a flow needs at least one box")
    colors = list(colors or ["#dbe9f6", "#fde2c8", "#d9f0d3", "#f3d9ec", "#e8e8e8"])
    n = len(steps)
    fig, ax = plt.subplots(figsize=(2.3 * n, 2.0))
    width, gap = 1.0, 0.35
    for i, (heading, detail) in enumerate(steps):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0), width, 1, boxstyle="round,pad=0.03", fc=colors[i % len(colors)],
                                    ec="#555555"))
        ax.text(x + width / 2, 0.72, heading, ha="center", va="center", fontsize="medium", weight="bold", wrap=True)
        ax.text(x + width / 2, 0.35, detail, ha="center", va="center", fontsize="small", wrap=True)
        if i < n - 1:
            ax.annotate("", xy=(x + width + gap - 0.03, 0.5), xytext=(x + width + 0.03, 0.5),
                        arrowprops={"arrowstyle": "->", "lw": 1.5})
    ax.set_xlim(-0.1, n * (width + gap) - gap + 0.1)
    ax.set_ylim(-0.15, 1.15)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize="large")
    fig.tight_layout()
    plt.close(fig)  # returned, not drawn twice: a notebook shows the returned figure once
    return fig


def plot_finetuning_pipeline(pretraining: str, base: str, task: str, evaluation: str):
    """The fine-tuning pipeline of lesson 01, with the lesson's own numbers in the boxes."""
    return plot_flow([("pretraining text", pretraining), ("pretrained model", base),
                      ("fine-tune on the task", task), ("fine-tuned model", "same weights, updated"),
                      ("evaluate", evaluation)], title="Fine-tuning: a pretrained model adapted to a task")


def _shrunk(before, after, parts: int = 2) -> str:
    """The parts of a memory bill that shrank most from ``before`` to ``after``, as ``"optimizer -258 GB"``."""
    drops = sorted(((before.parts()[name] - value, name) for name, value in after.parts().items()), reverse=True)
    named = [f"{name.replace('_', ' ')} -{drop / 1e9:,.0f} GB" for drop, name in drops[:parts] if drop >= 0.5e9]
    return ", ".join(named) or "same bytes"


def plot_memory_map(steps: Sequence[tuple[str, Any]], budgets: dict[str, float] | None = None,
                    title: str = "What each lesson removes from the memory bill"):
    """The course as one figure: a fine-tuning memory bill, and the lesson that removes each part of it.

    ``steps`` is a sequence of ``(label, breakdown)``, the first the full bill, each next one a lesson's
    change; a breakdown is anything with ``total`` (bytes at the peak) and ``parts()`` (bytes by part),
    such as ``memory_estimate.estimate_training_memory``'s result. Each bar is a peak on a log axis, with
    the parts that shrank most since the bar above (after - before, per part) written beside it;
    ``budgets`` maps a name to bytes drawn as a dashed line (``{"48 GB GPU": 48e9}``).
    Shapes: one bar per step.
    Example: ``plot_memory_map([("full", full), ("LoRA (lesson 04)", lora)])`` -> a Figure with 2 bars.
    """
    plt = course_import("matplotlib.pyplot")

    if len(steps) == 0:
        raise ValueError("steps is empty: a memory map needs at least one bill")
    for label, breakdown in steps:
        if not (hasattr(breakdown, "total") and callable(getattr(breakdown, "parts", None))):
            raise TypeError(f"step {label!r}: a breakdown needs .total and .parts(), got {type(breakdown).__name__}")
    totals = [breakdown.total / 1e9 for _, breakdown in steps]  # GB
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(steps) + 1.3))
    ys = range(len(steps))[::-1]  # the first step on top
    ax.barh(list(ys), totals, color=plt.cm.viridis_r([0.15 + 0.7 * i / max(1, len(steps) - 1)
                                                     for i in range(len(steps))]), height=0.6)
    for i, (y, total) in enumerate(zip(ys, totals)):
        if i == 0:  # the whole bill, part by part, inside its bar
            parts = [f"{name.replace('_', ' ')} {value / 1e9:,.0f}"
                     for name, value in steps[0][1].parts().items() if value >= 0.5e9]
            half = (len(parts) + 1) // 2
            ax.text(min(totals) / 1.8, y, ", ".join(parts[:half]) + ",\n" + ", ".join(parts[half:]) + " GB",
                    va="center", fontsize="small")
            detail = "the whole bill"
        else:
            detail = _shrunk(steps[i - 1][1], steps[i][1])
        ax.text(total * 1.08, y, f"{total:,.1f} GB   ({detail})", va="center", fontsize="small")
    for k, (name, size) in enumerate((budgets or {}).items()):
        ax.axvline(size / 1e9, color="gray", linestyle="--", linewidth=0.8)
        ax.text(size / 1e9, len(steps) - 0.5 + 0.22 * (k % 2), name, ha="center", va="bottom", fontsize="small",
                color="gray")
    ax.set_yticks(list(ys), [label for label, _ in steps], fontsize="small")
    ax.set_xscale("log")
    low, high = min(totals) / 2, max(totals) * 16  # room for the notes on the right
    ticks = [m * 10 ** e for e in range(-1, 6) for m in (1, 3) if low <= m * 10 ** e <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set(xlim=(low, high), ylim=(-0.6, len(steps) + 0.1),
           xlabel="peak memory of one training step (GB, log scale)", title=title)
    fig.tight_layout()
    plt.close(fig)
    return fig
