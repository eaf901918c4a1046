"""Schematic figures: the right number of boxes, and a clear error for nothing to draw."""

import pytest
from matplotlib.patches import FancyBboxPatch

from qlora_lessons.diagrams import plot_finetuning_pipeline, plot_flow, plot_memory_map


def test_flow_draws_one_box_per_step():
    figure = plot_flow([("a", "1"), ("b", "2"), ("c", "3")], title="t")
    boxes = [p for p in figure.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 3 and figure.axes[0].get_title() == "t"


def test_pipeline_has_five_stages_with_the_given_numbers():
    figure = plot_finetuning_pipeline("98k tokens", "2.8M parameters", "840 questions", "360 questions")
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert {"98k tokens", "2.8M parameters", "840 questions", "360 questions"} <= set(texts)
    assert sum(isinstance(p, FancyBboxPatch) for p in figure.axes[0].patches) == 5


def test_empty_flow_is_an_error():
    with pytest.raises(ValueError, match="steps"):
        plot_flow([])


class _Bill:
    """A stand-in for a MemoryBreakdown: a peak and its parts."""

    def __init__(self, total, **parts):
        self.total, self._parts = total, parts

    def parts(self):
        return self._parts


def test_memory_map_has_one_bar_per_step_and_names_what_shrank():
    full = _Bill(208e9, weights=52e9, gradients=52e9, optimizer=104e9)
    lora = _Bill(30e9, weights=26e9, gradients=1e9, optimizer=2e9)
    figure = plot_memory_map([("full", full), ("LoRA", lora)], budgets={"48 GB": 48e9})
    ax = figure.axes[0]
    assert [round(bar.get_width()) for bar in ax.containers[0]] == [208, 30]  # GB, the first step on top
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "optimizer -102 GB, gradients -51 GB" in texts and "48 GB" in texts and "weights 52" in texts


def test_memory_map_refuses_nothing_and_non_breakdowns():
    with pytest.raises(ValueError, match="steps"):
        plot_memory_map([])
    with pytest.raises(TypeError, match="'full'.*float"):
        plot_memory_map([("full", 208e9)])
