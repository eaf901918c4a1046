"""Schematic figures: the right number of boxes, and a clear error for nothing to draw."""

import pytest
from matplotlib.patches import FancyBboxPatch

from qlora_lessons.diagrams import plot_finetuning_pipeline, plot_flow


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
