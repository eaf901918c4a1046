"""Pictures of 4-bit quantization: the code levels on a histogram, and a widget to look up one value.

- ``plot_code_levels(values, code, absmax)``: a histogram of values with the 16 levels of a 4-bit code,
  scaled by absmax, drawn on it. NF4 puts its levels where a normal distribution puts its mass; INT4
  spaces them evenly; FP4 crowds them near zero.
- ``plot_code_comparison(scaled)``: the same histogram once per code (INT4, FP4, NF4), side by side.
- ``explain_value(w, block, index)``: everything about one weight: its block's absmax, the scaled value,
  its 4-bit code, the level it is rounded to, and the error; ``plot_value_lookup`` draws it and
  ``code_explorer(w)`` is the same as a widget.
- ``plot_dequantized_vs_absmax``: what one value comes back as, as its block's absmax changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qlora_lessons.blockwise import blockwise_absmax_scale, check_blocksize, check_float_tensor
from qlora_lessons.course_extra import course_import
from qlora_lessons.nf4 import code_for, nearest_4bit


def plot_code_levels(values: torch.Tensor, code: torch.Tensor, absmax: float = 1.0, title: str = "",
                     bins: int = 100, ax=None):
    """Histogram of values with the code levels times absmax drawn as vertical lines.

    Equation: the lines sit at code[k] * absmax for k = 0..15.
    Shapes: values (any), code (16,) -> a figure.
    Example: ``plot_code_levels(w, nf4_code(), float(w.abs().max()), "NF4 on N(0, 1)")``.
    Returns the matplotlib Figure (closed, so a notebook shows it once, as the cell's value).
    """
    plt = course_import("matplotlib.pyplot")

    check_float_tensor(values, "values")
    if not isinstance(code, torch.Tensor) or code.dim() != 1:
        raise ValueError(f"code must be a 1-D tensor of levels, got {getattr(code, 'shape', code)!r}")
    if not isinstance(absmax, (int, float)) or not absmax > 0:
        raise ValueError(f"absmax must be a positive number, got {absmax!r}")
    fig, ax = plt.subplots(figsize=(6.4, 2.6), layout="constrained") if ax is None else (ax.figure, ax)
    ax.hist(values.detach().float().reshape(-1).cpu().numpy(), bins=bins, color="tab:blue", alpha=0.6)
    for level in (code.float() * absmax).tolist():
        ax.axvline(level, color="tab:red", linewidth=0.8)
    ax.set(xlabel="value", ylabel="count", xlim=(-1.05 * absmax, 1.05 * absmax),
           title=title or f"{code.numel()} levels x absmax {absmax:.3g}")
    plt.close(fig)
    return fig


def plot_code_comparison(scaled: torch.Tensor, quant_types: tuple[str, ...] = ("int4", "fp4", "nf4"),
                         title: str = "", bins: int = 100):
    """One panel per code: the histogram of values already scaled into [-1, 1], with that code's levels.

    Shapes: scaled (any) values in [-1, 1] (e.g. w / absmax of its block) -> a figure with len(quant_types) panels.
    Example: ``plot_code_comparison(blockwise_absmax_scale(torch.randn(4096), 64)[1])``.
    """
    plt = course_import("matplotlib.pyplot")

    check_float_tensor(scaled, "scaled")
    if not isinstance(quant_types, (tuple, list)) or not quant_types:
        raise ValueError(f"quant_types must be a non-empty tuple of code names, got {quant_types!r}")
    fig, axes = plt.subplots(1, len(quant_types), figsize=(3.2 * len(quant_types), 2.4), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, quant_type in zip(axes[0], quant_types, strict=True):
        plot_code_levels(scaled, code_for(quant_type), 1.0, title=quant_type.upper(), bins=bins, ax=ax)
        ax.set_ylabel("")
    axes[0][0].set_ylabel("count")
    if title:
        fig.suptitle(title)
    plt.close(fig)
    return fig


def plot_dequantized_vs_absmax(value: float, absmax: torch.Tensor, dequantized: dict[str, torch.Tensor],
                               target: float | None = None):
    """What one value comes back as after 4-bit quantization, against the absmax of its block.

    Equation: each curve is level(value / absmax) * absmax: straight pieces (one level each) with jumps
    where value / absmax crosses a midpoint between levels.
    Shapes: absmax (k,), each dequantized[name] (k,) -> a figure.
    Example: ``plot_dequantized_vs_absmax(-0.765432, a, {"nf4": w_hat}, target=-0.75)``.
    """
    plt = course_import("matplotlib.pyplot")

    if not isinstance(dequantized, dict) or not dequantized:
        raise ValueError("dequantized must be a non-empty dict {code name: (k,) values}")
    for name, values in dequantized.items():
        if values.shape != absmax.shape:
            raise ValueError(f"dequantized[{name!r}] has shape {tuple(values.shape)}, absmax {tuple(absmax.shape)}")
    fig, ax = plt.subplots(figsize=(6.4, 2.8), layout="constrained")
    for name, values in dequantized.items():
        ax.plot(absmax.tolist(), values.tolist(), label=name.upper(), linewidth=1.2)
    ax.axhline(value, color="black", linewidth=0.8, linestyle="--", label=f"the value {value:g}")
    if target is not None:
        ax.axhline(target, color="tab:red", linewidth=0.8, linestyle=":", label=f"{target:g}")
    ax.set(xlabel="absmax of the block", ylabel="dequantized value", title=f"{value:g} after 4-bit quantization")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.close(fig)
    return fig


@dataclass(frozen=True)
class ValueLookup:
    """One weight through 4-bit quantization: where it sits, what it becomes, what it loses."""

    block: int
    index: int
    value: float
    absmax: float
    scaled: float
    code: int
    level: float
    dequantized: float

    @property
    def error(self) -> float:
        return self.dequantized - self.value

    def __repr__(self) -> str:
        return (f"block {self.block}, value {self.index}: w = {self.value:+.6f}; absmax {self.absmax:.6f}; "
                f"w / absmax = {self.scaled:+.6f} -> code {self.code} (0b{self.code:04b}), level {self.level:+.6f}; "
                f"level x absmax = {self.dequantized:+.6f}; error {self.error:+.2e}")


def explain_value(w: torch.Tensor, block: int, index: int, blocksize: int = 64, quant_type: str = "nf4") -> ValueLookup:
    """Follow one weight, the index-th value of block ``block``, through 4-bit quantization.

    Equation: scaled = w / absmax_block; code = the nearest level's 4-bit pattern; w_hat = level * absmax.
    Shapes: w (any, n elements); block in 0..ceil(n / blocksize) - 1, index within the block.
    Example: ``explain_value(torch.tensor([-0.765432, 1.0] + [0.0] * 62), 0, 0)`` -> code 1, level -0.696193.
    """
    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    n = w.numel()
    n_blocks = -(-n // blocksize)
    if not isinstance(block, int) or not 0 <= block < n_blocks:
        raise ValueError(f"block must be an int in 0..{n_blocks - 1}, got {block!r}")
    size = min(blocksize, n - block * blocksize)
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"index must be an int in 0..{size - 1} (block {block} has {size} values), got {index!r}")
    code = code_for(quant_type)
    absmax, scaled = blockwise_absmax_scale(w, blocksize)
    position = block * blocksize + index
    q = int(nearest_4bit(scaled[position : position + 1], code))
    level = float(code[q])
    dequantized = float(torch.tensor(level) * absmax[block])  # float32, as dequantize_4bit computes it
    return ValueLookup(block, index, float(w.reshape(-1)[position]), float(absmax[block]),
                       float(scaled[position]), q, level, dequantized)


def plot_value_lookup(w: torch.Tensor, block: int, index: int, blocksize: int = 64, quant_type: str = "nf4"):
    """The picture of ``explain_value``: the block's values, its code levels times absmax, the chosen value.

    Shapes: w (any, n elements) -> a figure (the one ``code_explorer`` shows for its controls).
    Example: ``plot_value_lookup(torch.randn(4, 64), block=1, index=3, quant_type="nf4")``.
    """
    found = explain_value(w, block, index, blocksize, quant_type)
    values = w.detach().float().reshape(-1)[block * blocksize : (block + 1) * blocksize]
    fig = plot_code_levels(values, code_for(quant_type), found.absmax, bins=32,
                           title=f"block {block}: value {found.value:+.4f} -> code {found.code} -> "
                                 f"{found.dequantized:+.4f} ({quant_type})")
    fig.axes[0].axvline(found.value, color="black", linewidth=2)
    return fig


def code_explorer(w: torch.Tensor, blocksize: int = 64):
    """A widget: pick a block, a value in it and a code; see its 4-bit code, level and error.

    Shapes: w (any). Example: ``code_explorer(torch.randn(4, 64))`` -> a widget to display.
    Returns an ipywidgets VBox: the block slider, the index slider, the code buttons, a caption and a figure.
    """
    widgets = course_import("ipywidgets")
    display = course_import("IPython.display").display

    check_float_tensor(w, "w")
    check_blocksize(blocksize)
    n_blocks = -(-w.numel() // blocksize)
    block = widgets.IntSlider(0, min=0, max=n_blocks - 1, description="block", continuous_update=False)
    index = widgets.IntSlider(0, min=0, max=min(blocksize, w.numel()) - 1, description="value",
                              continuous_update=False)
    quant_type = widgets.ToggleButtons(options=["nf4", "fp4", "int4"], value="nf4", description="code")
    caption, picture = widgets.HTML(), widgets.Output()

    def show(_=None) -> None:
        index.max = min(blocksize, w.numel() - block.value * blocksize) - 1
        found = explain_value(w, block.value, index.value, blocksize, quant_type.value)
        caption.value = f"<code>{found!r}</code>"
        fig = plot_value_lookup(w, block.value, index.value, blocksize, quant_type.value)
        picture.clear_output(wait=True)
        with picture:
            display(fig)

    for control in (block, index, quant_type):
        control.observe(show, names="value")
    show()
    return widgets.VBox([block, index, quant_type, caption, picture])
