"""qlora_lessons.lora_plots: LoRA's size in one line, against the rank, and the calculator widget."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_lora import tiny_llama  # noqa: E402

from qlora_lessons.lora import add_lora, count_trainable  # noqa: E402
from qlora_lessons.lora_plots import (  # noqa: E402
    LLAMA_TARGETS,
    describe_lora_size,
    lora_calculator,
    plot_trainable_vs_rank,
    targets_of,
)


def test_description_agrees_with_a_model_that_has_the_adapter():
    model = tiny_llama()
    line = describe_lora_size(model, ["q_proj", "v_proj"], r=4, lora_alpha=8)
    count = count_trainable(add_lora(tiny_llama(), ["q_proj", "v_proj"], r=4, lora_alpha=8))
    assert line == (f"scaling alpha / r = 2; adds 2,048 parameters, {count.fraction:.2%} of {count.total:,}; "
                    "adapter 8.19 kB in float32, 4.10 kB in 16 bits")
    assert count.trainable == 2048 and count.trainable_bytes == 8192
    assert describe_lora_size(model, "all-linear", r=1, lora_alpha=0.5).startswith("scaling alpha / r = 0.5;")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"r": 0}, ValueError, "r must be >= 1, got r=0"),
        ({"r": 65}, ValueError, r"r must be <= min\(in_features, out_features\) = 64"),
        ({"lora_alpha": 0}, ValueError, "alpha must be a positive number, got lora_alpha=0"),
        ({"target_modules": ["query"]}, ValueError, r"'query' matches no linear layer.*q_proj \(x2\)"),
    ],
)
def test_description_rejects_bad_inputs(kwargs, error, message):
    arguments = {"target_modules": "all-linear", "r": 4, "lora_alpha": 8} | kwargs
    with pytest.raises(error, match=message):
        describe_lora_size(tiny_llama(), **arguments)


def test_plot_has_one_line_per_target_choice_with_the_trainable_share():
    model = tiny_llama()
    fig = plot_trainable_vs_rank(model, ranks=(1, 4, 16))
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.lines]
    assert labels == [*LLAMA_TARGETS, "2% of the model"]
    for line, targets in zip(ax.lines, LLAMA_TARGETS.values()):
        expected = [100 * count_trainable(add_lora(tiny_llama(), targets, r=r, lora_alpha=r)).fraction
                    for r in (1, 4, 16)]
        assert np.allclose(line.get_ydata(), expected)
    with pytest.raises(ValueError, match="ranks must not be empty"):
        plot_trainable_vs_rank(model, ranks=())
    with pytest.raises(TypeError, match="targets must be a non-empty dict"):
        plot_trainable_vs_rank(model, targets={})


def test_default_targets_are_the_choices_the_model_has():
    import transformers

    phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))  # one fused qkv_proj: no q_proj, no v_proj
    assert targets_of(tiny_llama()) == LLAMA_TARGETS
    assert targets_of(phi3) == {"all linear layers": "all-linear"}
    assert [line.get_label() for line in plot_trainable_vs_rank(phi3, ranks=(1, 2)).axes[0].lines] == [
        "all linear layers", "2% of the model"]
    assert lora_calculator(phi3, r=4, alpha=8).children[2].options == ("all linear layers",)


def test_calculator_caption_follows_its_controls():
    model = tiny_llama()
    widget = lora_calculator(model, r=4, lora_alpha=8)
    r_slider, alpha_slider, menu, caption = widget.children
    assert (r_slider.min, r_slider.max, r_slider.value, alpha_slider.value) == (1, 64, 4, 8)
    assert caption.value == describe_lora_size(model, ("q_proj", "v_proj"), 4, 8)
    r_slider.value, alpha_slider.value = 16, 32
    menu.value = "all linear layers"
    assert caption.value == describe_lora_size(model, "all-linear", 16, 32)
    with pytest.raises(ValueError, match="r must be <= 64 for the calculator, got r=65|= 64 for"):
        lora_calculator(model, r=65)
