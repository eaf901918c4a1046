"""qlora_lessons.memory_calculator: the breakdown figure and the widget calculator."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from qlora_lessons import (  # noqa: E402
    estimate_training_memory,
    memory_calculator,
    plot_memory_breakdown,
    plot_memory_calculator,
)
from qlora_lessons.memory_calculator import breakdown_table  # noqa: E402


def test_one_stacked_bar_per_setting_with_its_peak():
    settings = {"full": estimate_training_memory("llama-13b"),
                "QLoRA": estimate_training_memory("llama-13b", method="qlora", weight_dtype=torch.bfloat16)}
    ax = plot_memory_breakdown(settings)
    assert len(ax.patches) == 6 * len(settings)  # six parts per bar
    heights = [sum(p.get_height() for p in ax.patches[6 * i:6 * i + 6]) for i in range(2)]
    for height, breakdown in zip(heights, settings.values(), strict=True):
        assert height == pytest.approx(sum(breakdown.parts().values()) / 1e9)
    peaks = [line.get_ydata()[0] for line in ax.lines if line.get_color() == "black"]
    assert peaks == pytest.approx([b.total / 1e9 for b in settings.values()])
    budgets = {round(line.get_ydata()[0] * 1e9 / 2**30) for line in ax.lines if line.get_linestyle() == "--"}
    assert budgets == {16, 24, 48, 80}  # cards in GiB, all below the full fine-tune's 210 GB
    plt.close("all")


def test_a_zoomed_panel_redraws_the_small_bars_on_their_own_scale():
    settings = {"full": estimate_training_memory("llama-13b"),
                "QLoRA": estimate_training_memory("llama-13b", method="qlora", weight_dtype=torch.bfloat16)}
    ax = plot_memory_breakdown(settings, zoom=("QLoRA",))
    left, right = ax.figure.axes
    assert left is ax and len(right.patches) == 6 and right.get_ylim()[1] < 0.5 * left.get_ylim()[1]
    assert right.get_legend() is not None and left.get_legend() is None
    with pytest.raises(ValueError, match="zoom"):
        plot_memory_breakdown(settings, zoom=("LoRA",))
    plt.close("all")


def test_plot_rejects_what_is_not_a_breakdown():
    with pytest.raises(ValueError, match="breakdowns"):
        plot_memory_breakdown({})
    with pytest.raises(TypeError, match="breakdowns"):
        plot_memory_breakdown({"x": 208e9})


def _knobs(calculator) -> dict:
    """The calculator's knobs by description, from its rows of widgets."""
    return {widget.description: widget for row in calculator.children[:-2] for widget in row.children}


def test_the_calculator_redraws_when_a_knob_turns():
    calculator = memory_calculator()
    knobs = _knobs(calculator)
    assert {"model", "method", "dtype", "optimizer", "LoRA rank", "LoRA on", "batch", "seq len",
            "gradient checkpointing"} == set(knobs)
    knobs["method"].value = "full"
    knobs["model"].value = "llama-7b"
    knobs["gradient checkpointing"].value = True
    figure, table = calculator.children[-1].children
    assert "qlora-calculator-figure" in figure._dom_classes and "qlora-calculator-batch" in knobs["batch"]._dom_classes
    plt.close("all")


def test_the_calculator_fits_a_1280_pixel_window():
    """Each row of knobs fits the output area of a notebook in a 1280-px window with the file browser open
    (about 860 px); the slider's track is wide enough to drag; the method buttons stay on one row."""
    calculator = memory_calculator()

    def px(value: str) -> int:
        assert value.endswith("px"), value
        return int(value[:-2])

    for row in calculator.children[:-2]:
        assert sum(px(widget.layout.width) for widget in row.children) <= 860, [w.description for w in row.children]
    knobs = _knobs(calculator)
    batch = knobs["batch"]
    assert px(batch.layout.width) - px(batch.style.description_width) >= 250  # the track and its readout
    method = knobs["method"]
    buttons = len(method.options) * (px(method.style.button_width) + 8)  # 8 px of margins per button
    assert px(method.style.description_width) + buttons <= px(method.layout.width)
    assert not knobs["gradient checkpointing"].indent  # the label right of the box, not cut at the left
    plt.close("all")


def test_the_breakdown_prints_in_short_lines():
    estimate = estimate_training_memory("llama-13b", method="qlora", weight_dtype=torch.bfloat16)
    lines = breakdown_table(estimate).splitlines()
    assert len(lines) == 7 and max(len(line) for line in lines) <= 30
    assert lines[0].startswith("weights") and lines[-1].startswith("peak") and lines[-1].endswith("GB")
    with pytest.raises(TypeError, match="breakdown"):
        breakdown_table(11e9)


def test_budget_labels_do_not_overlap():
    settings = {"full": estimate_training_memory("llama-13b"),
                "QLoRA": estimate_training_memory("llama-13b", method="qlora", weight_dtype=torch.bfloat16)}
    ax = plot_memory_breakdown(settings)
    ys = sorted(text.get_position()[1] for text in ax.texts if "GiB card" in text.get_text())
    assert len(ys) == 4 and min(b - a for a, b in zip(ys, ys[1:])) >= 0.07 * ax.get_ylim()[1]  # 16 and 24 apart
    plt.close("all")


def test_the_calculators_figure_is_the_estimate_of_its_knobs():
    drawn = plot_memory_calculator(method="full", dtype="float32", model="llama-7b")
    assert drawn == estimate_training_memory("llama-7b", method="full", weight_dtype=torch.float32)
    assert plot_memory_calculator().total == estimate_training_memory(
        "llama-13b", method="qlora", weight_dtype=torch.bfloat16).total  # the opening setting
    with pytest.raises(ValueError, match="knobs"):
        plot_memory_calculator(rank=8)
    with pytest.raises(ValueError, match="dtype"):
        plot_memory_calculator(dtype="int8")
    plt.close("all")


QWEN = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


def test_every_preset_and_a_pasted_config_give_the_estimate():
    import json

    from qlora_lessons.memory_calculator import CALCULATOR_MODELS, YOUR_MODEL
    from qlora_lessons.memory_models import PRESET_NAMES

    assert set(PRESET_NAMES) < set(CALCULATOR_MODELS) and CALCULATOR_MODELS[-1] == YOUR_MODEL
    knobs = dict(method="lora", dtype="bfloat16", target_modules="all-linear", seq_len=1024)
    expected = estimate_training_memory("qwen2.5-0.5b", method="lora", weight_dtype=torch.bfloat16,
                                        target_modules="all-linear", seq_len=1024)
    assert plot_memory_calculator(model="qwen2.5-0.5b", **knobs) == expected
    assert plot_memory_calculator(model=YOUR_MODEL, config=json.dumps(QWEN), **knobs).total == expected.total
    plt.close("all")


def test_a_bad_pasted_config_gives_a_message_not_a_traceback(capsys):
    from qlora_lessons.memory_calculator import YOUR_MODEL

    with pytest.raises(ValueError, match="not valid JSON"):
        plot_memory_calculator(model=YOUR_MODEL, config="{model_type: qwen2")
    with pytest.raises(ValueError, match="model_type"):
        plot_memory_calculator(model=YOUR_MODEL, config='{"hidden_size": 8}')
    calculator = memory_calculator()
    config = calculator.children[-2]
    assert config.layout.display == "none"  # the box shows only for "your model"
    _knobs(calculator)["model"].value = YOUR_MODEL
    assert config.layout.display is None
    config.value = "not json"
    table = calculator.children[-1].children[1]
    shown = capsys.readouterr().out + "".join(o.get("text", "") for o in table.outputs)  # no kernel: stdout
    assert "not valid JSON" in shown and "Traceback" not in shown
    plt.close("all")
