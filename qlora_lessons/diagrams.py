"""Schematic figures: boxes and arrows that a lesson draws instead of describing in words.

Each function returns the matplotlib ``Figure`` it drew, so a notebook cell can show or save it.
Left out: anything with data in it (those plots live beside the concept they show).
"""

from __future__ import annotations

from collections.abc import Sequence


def plot_flow(steps: Sequence[tuple[str, str]], title: str = "", colors: Sequence[str] | None = None):
    """Draw boxes left to right joined by arrows; each step is ``(heading, detail)``.

    Example: ``plot_flow([("data", "840 questions"), ("model", "2.8M parameters")])`` -> two boxes, one arrow.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

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
        ax.text(x + width / 2, 0.72, heading, ha="center", va="center", fontsize=10, weight="bold", wrap=True)
        ax.text(x + width / 2, 0.35, detail, ha="center", va="center", fontsize=8, wrap=True)
        if i < n - 1:
            ax.annotate("", xy=(x + width + gap - 0.03, 0.5), xytext=(x + width + 0.03, 0.5),
                        arrowprops={"arrowstyle": "->", "lw": 1.5})
    ax.set_xlim(-0.1, n * (width + gap) - gap + 0.1)
    ax.set_ylim(-0.15, 1.15)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    plt.close(fig)  # returned, not drawn twice: a notebook shows the returned figure once
    return fig


def plot_finetuning_pipeline(pretraining: str, base: str, task: str, evaluation: str):
    """The fine-tuning pipeline of lesson 01, with the lesson's own numbers in the boxes."""
    return plot_flow([("pretraining text", pretraining), ("pretrained model", base),
                      ("fine-tune on the task", task), ("fine-tuned model", "same weights, updated"),
                      ("evaluate", evaluation)], title="Fine-tuning: a pretrained model adapted to a task")
