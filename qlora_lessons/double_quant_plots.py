"""Pictures of double quantization: the constants and their 8-bit error, their memory, a calculator.

- ``plot_constants(absmax)``: the absmax constants of a quantized tensor, before and after the 8-bit
  double quantization, and the relative error that step adds to each constant.
- ``plot_constants_memory(sizes)``: GB of constants for models of several sizes, float32 against
  double-quantized.
- ``constants_calculator()``: a widget over model size, blocksize and blocksize2.
"""

from __future__ import annotations

import torch

from qlora_lessons.course_extra import course_import
from qlora_lessons.double_quant import dequantize_absmax, estimate_constants_memory, quantize_absmax


def plot_constants(absmax: torch.Tensor, blocksize2: int = 256, bins: int = 60):
    """Histogram of the constants with their mean (the offset), and the relative error after double quantization.

    Equation: absmax_hat = code8[q] * absmax2 + offset; relative error = (absmax_hat - absmax) / absmax.
    Shapes: absmax (n_blocks,) float32 -> a figure with two panels.
    Example: ``plot_constants(quantize_4bit(w)[1].absmax)``.
    """
    plt = course_import("matplotlib.pyplot")

    codes, offset, state2 = quantize_absmax(absmax, blocksize2)
    relative = ((dequantize_absmax(codes, offset, state2) - absmax) / absmax).numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8), layout="constrained")
    left.hist(absmax.numpy(), bins=bins, color="tab:blue", alpha=0.7)
    left.axvline(offset, color="black", linewidth=1.5, label=f"mean = offset {offset:.3f}")
    left.set(xlabel="absmax of a block", ylabel="blocks", title=f"{absmax.numel()} constants")
    left.legend(fontsize="small")
    right.hist(relative, bins=bins, color="tab:orange", alpha=0.8)
    right.set(xlabel="relative error of the constant", ylabel="blocks", title="after 8-bit double quantization")
    plt.close(fig)
    return fig


def plot_constants_memory(sizes: dict[str, int], blocksize: int = 64, blocksize2: int = 256):
    """Bars: GB of quantization constants per model, float32 constants against double-quantized ones.

    Shapes: sizes maps a label to a parameter count, e.g. {"7B": 7 * 10**9}.
    Example: ``plot_constants_memory({"7B": 7 * 10**9, "65B": 65 * 10**9})``.
    """
    plt = course_import("matplotlib.pyplot")

    if not sizes:
        raise ValueError("sizes must name at least one model, e.g. {'7B': 7 * 10**9}")
    labels = list(sizes)
    plain = [estimate_constants_memory(sizes[k], blocksize).constant_bytes / 1e9 for k in labels]
    double = [estimate_constants_memory(sizes[k], blocksize, True, blocksize2).constant_bytes / 1e9 for k in labels]
    x = torch.arange(len(labels)).numpy()
    fig, ax = plt.subplots(figsize=(6.4, 2.8), layout="constrained")
    ax.bar(x - 0.2, plain, width=0.4, label=f"float32 absmax (blocksize {blocksize})")
    ax.bar(x + 0.2, double, width=0.4, label=f"double-quantized (blocks of {blocksize2})")
    ax.set_xticks(x, labels)
    ax.set(ylabel="GB of constants", title="memory of the quantization constants")
    ax.legend(fontsize="small")
    plt.close(fig)
    return fig


def constants_calculator(billions: float = 65.0):
    """A widget: model size, blocksize and blocksize2 -> bits per parameter and GB of constants saved.

    Example: ``constants_calculator(65)`` shows 4.5 vs 4.127 bits per parameter and about 3 GB saved.
    Returns an ipywidgets VBox of the three controls and a caption.
    """
    widgets = course_import("ipywidgets")

    if not isinstance(billions, (int, float)) or not 0.001 <= billions <= 2000:
        raise ValueError(f"billions must be a number of parameters in billions (0.001..2000), got {billions!r}")
    size = widgets.FloatLogSlider(value=billions, base=10, min=-1, max=3, description="params (B)",
                                  continuous_update=False)
    blocksize = widgets.Dropdown(options=[32, 64, 128, 256], value=64, description="blocksize")
    blocksize2 = widgets.Dropdown(options=[64, 128, 256, 512, 1024], value=256, description="blocksize2")
    caption = widgets.HTML()

    def show(_=None) -> None:
        n = int(size.value * 1e9)
        plain = estimate_constants_memory(n, blocksize.value)
        double = estimate_constants_memory(n, blocksize.value, True, blocksize2.value)
        saved = plain.total_bytes - double.total_bytes
        caption.value = (f"<code>{size.value:.1f}B parameters: {8 * plain.total_bytes / n:.3f} -> "
                         f"{8 * double.total_bytes / n:.3f} bits per parameter; constants "
                         f"{plain.constant_bytes / 1e9:.2f} GB -> {double.constant_bytes / 1e9:.2f} GB; saved "
                         f"{saved / 1e9:.2f} GB = {100 * saved / plain.total_bytes:.1f}% of the 4-bit model</code>")

    for control in (size, blocksize, blocksize2):
        control.observe(show, names="value")
    show()
    return widgets.VBox([size, blocksize, blocksize2, caption])
