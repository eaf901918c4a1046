"""Memory of fine-tuning, part 5: a figure of memory breakdowns against GPU sizes, and a calculator with knobs.

``plot_memory_breakdown`` draws one stacked bar per setting (weights, quantization constants,
adapters, optimizer state, gradients, activations) with the peak marked on it, against lines for
common GPU memory sizes. ``memory_calculator`` wraps ``estimate_training_memory`` in ipywidgets so
a reader can turn the knobs (model, method, dtype, optimizer, rank, batch, sequence length,
checkpointing) and watch the bar move.

Left out: multi-GPU sharding (the bars are for one device).
"""

from __future__ import annotations

import torch

from qlora_lessons.course_extra import course_import
from qlora_lessons.memory import MODEL_NAMES, MemoryBreakdown, _gb
from qlora_lessons.memory_estimate import METHODS, OPTIMIZERS, estimate_training_memory
from qlora_lessons.memory_models import PRESET_NAMES, load_config, model_shape
from qlora_lessons.renamed_arguments import rename_settings

GPU_BUDGETS_GB = (16, 24, 48, 80)  # common GPU sizes: consumer 16/24 GB cards, 48 GB workstation cards, A100/H100 80 GB
_COLORS = {"weights": "#4c72b0", "quant_constants": "#8172b2", "adapters": "#55a868", "optimizer": "#c44e52",
           "gradients": "#dd8452", "activations": "#937860"}
_ORDER = ("weights", "quant_constants", "adapters", "optimizer", "gradients", "activations")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def plot_memory_breakdown(breakdowns: dict[str, MemoryBreakdown], *, budgets_gb=GPU_BUDGETS_GB, ax=None,
                          title: str | None = None, zoom: tuple[str, ...] | None = None):
    """One stacked bar per breakdown (GB), a black tick at its peak (``total``), dashed lines at GPU sizes.

    The bar is every part held at once; the tick is lower when activations and gradients do not
    coexist (the backward pass frees one as it makes the other). The dashed lines are the cards of
    ``budgets_gb`` (sizes as sold, which are GiB: a "24 GB" card holds 24 * 2**30 bytes, drawn at
    25.8 GB) below the tallest bar and the first one above it, labelled right of the bars.
    ``zoom``: names of breakdowns to draw again in a second panel on their own scale (small bars that
    a large one squashes); then a new figure with two Axes is made and the first is returned.
    Returns the matplotlib Axes. Example: ``plot_memory_breakdown({"full": estimate_training_memory("llama-13b")})``.
    """
    plt = course_import("matplotlib.pyplot")
    if zoom is not None:
        if ax is not None or not set(zoom) <= set(breakdowns or {}) or not zoom:
            raise ValueError(f"zoom must name some of the breakdowns ({list(breakdowns or {})}) and comes without ax; "
                             f"got {zoom!r}")
        figure, (ax, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [len(breakdowns),
                                                                                               len(zoom)]})
        plot_memory_breakdown({name: breakdowns[name] for name in zoom}, budgets_gb=budgets_gb, ax=right,
                              title="zoomed")
        plot_memory_breakdown(breakdowns, budgets_gb=budgets_gb, ax=ax, title=title)
        ax.get_legend().remove()  # one legend, right of the zoomed panel
        figure.tight_layout()
        return ax
    if not isinstance(breakdowns, dict) or not breakdowns:
        raise ValueError(f"breakdowns must be a non-empty dict of name -> MemoryBreakdown, got {breakdowns!r}")
    for name, value in breakdowns.items():
        if not isinstance(value, MemoryBreakdown):
            raise TypeError(f"breakdowns[{name!r}] must be a MemoryBreakdown, got {type(value).__name__}")
    if ax is None:
        _, ax = plt.subplots()
    names = list(breakdowns)
    for index, name in enumerate(names):
        bottom = 0.0
        for part in _ORDER:
            height = getattr(breakdowns[name], part) / 1e9
            ax.bar(index, height, bottom=bottom, color=_COLORS[part], width=0.6,
                   label=part.replace("_", " ") if index == 0 else None)
            bottom += height
        peak = breakdowns[name].total / 1e9
        ax.plot([index - 0.35, index + 0.35], [peak, peak], color="black", linewidth=2.5,
                label="peak" if index == 0 else None)
        ax.annotate(f"{peak:.1f}", (index, peak), xytext=(0, 3), textcoords="offset points", ha="center",
                    fontsize="small")
    top = max(sum(getattr(b, part) for part in _ORDER) for b in breakdowns.values()) / 1e9
    gb = {budget: budget * 2**30 / 1e9 for budget in sorted(budgets_gb)}  # a card of "N GB" holds N GiB
    above = [budget for budget in gb if gb[budget] > top][:1]  # the smallest GPU that holds every bar
    drawn = [budget for budget in gb if gb[budget] <= top] + above
    ax.set_ylim(0, max([top] + [gb[budget] for budget in drawn]) * 1.08)
    gap = 0.075 * ax.get_ylim()[1]  # about one line of label text on a figure 3 inches high
    label_y = -gap
    for budget in drawn:
        ax.axhline(gb[budget], color="gray", linestyle="--", linewidth=0.8)
        label_y = max(gb[budget], label_y + gap)  # lines closer than a line of text: the upper label moves up
        ax.text(len(names) - 0.45, label_y, f"{budget} GiB card", va="center", ha="left", fontsize="small",
                color="dimgray", zorder=5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("GB (1e9 bytes)")
    ax.set_title(title or "memory of one training step")
    ax.set_xlim(-0.5, len(names) + 0.55)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


CALCULATOR_START = dict(model="llama-13b", method="qlora", dtype="bfloat16", optimizer="adamw", r=8,
                        target_modules="q_proj, v_proj", batch_size=1, seq_len=512, checkpointing=False, config="")
YOUR_MODEL = "your model (paste config.json)"
CALCULATOR_MODELS = (*MODEL_NAMES, *(name for name in PRESET_NAMES if name not in MODEL_NAMES), YOUR_MODEL)


def pasted_config(text: str) -> dict:
    """The config dict of a pasted config.json, read like the command line reads one (``load_config``).

    Raises ValueError with a one-line message for text that is not JSON, not an object, or not a
    decoder-only architecture the estimator knows. Example: ``pasted_config('{"model_type": "qwen2", ...}')``.
    """
    import json

    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the pasted config.json is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("the pasted config.json must be a JSON object ({...}), as a model's config.json is")
    config = load_config(config, "the pasted config.json")
    model_shape(config, "the pasted config.json")  # unsupported architectures fail here, with their message
    return config


def plot_memory_calculator(**knobs):
    """Draw what ``memory_calculator`` draws for ``knobs`` (the keys of ``CALCULATOR_START``, which fills the rest).

    Returns the ``MemoryBreakdown`` it drew. Example: ``plot_memory_calculator()`` draws the opening setting,
    LLaMA-13B QLoRA in bfloat16; ``plot_memory_calculator(method="full")`` the full fine-tune.
    """
    knobs = rename_settings(knobs, {"lora_r": "r", "targets": "target_modules"}, "plot_memory_calculator")
    unknown = set(knobs) - set(CALCULATOR_START)
    if unknown:
        raise ValueError(f"unknown calculator knobs {sorted(unknown)}; the knobs are {list(CALCULATOR_START)}")
    values = {**CALCULATOR_START, **knobs}
    if values["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {values['dtype']!r}")
    model = values["model"]
    if model == YOUR_MODEL:
        model = pasted_config(values["config"])
    targets = values["target_modules"]
    targets = "all-linear" if targets == "all-linear" else tuple(targets.split(", "))
    estimate = estimate_training_memory(model, method=values["method"], weight_dtype=DTYPES[values["dtype"]],
                                        optimizer=values["optimizer"], r=values["r"], target_modules=targets,
                                        batch_size=values["batch_size"], seq_len=values["seq_len"],
                                        gradient_checkpointing=values["checkpointing"])
    name = values["model"] if values["model"] != YOUR_MODEL else f"your {model['model_type']}"
    label = f"{name} {values['method']}"
    plot_memory_breakdown({label: estimate}, title=f"{label}, {values['dtype']}: peak {estimate.total / 1e9:.1f} GB")
    return estimate


def breakdown_table(breakdown: MemoryBreakdown) -> str:
    """The parts of ``breakdown`` one per line, and the peak: short lines that a narrow output never wraps.

    Example: ``print(breakdown_table(estimate_training_memory("llama-13b", method="qlora")))`` prints
    ``weights            6.5 GB`` ... ``peak              10.3 GB``.
    """
    if not isinstance(breakdown, MemoryBreakdown):
        raise TypeError(f"breakdown must be a MemoryBreakdown, got {type(breakdown).__name__}")
    rows = [(part.replace("_", " "), getattr(breakdown, part)) for part in _ORDER] + [("peak", breakdown.total)]
    return "\n".join(f"{name:16s}{_gb(value):>10s}" for name, value in rows)


# Widths in CSS pixels: every row fits the output area of a notebook in a 1280-pixel window with JupyterLab's
# file browser open (about 860 px), and the labels (description_width) are as wide in every row.
_LABEL = {"description_width": "110px"}
_ROWS = (("model", "dtype", "optimizer"), ("method", "checkpointing"), ("batch_size", "seq_len"),
         ("r", "target_modules"))


def memory_calculator():
    """An ipywidgets calculator: pick model, method, dtype, optimizer, rank, batch, sequence length, checkpointing.

    Returns the widget (the last line of a notebook cell shows it); each change redraws the bar of
    ``estimate_training_memory`` for the setting against the GPU budget lines (``plot_memory_calculator``)
    and prints its parts (``breakdown_table``) beside it. The config.json box shows only for "your model".
    Example: ``memory_calculator()`` as the last line of a cell.
    """
    widgets = course_import("ipywidgets")
    plt = course_import("matplotlib.pyplot")

    def sized(width: str):  # -> ipywidgets.Layout
        return widgets.Layout(width=width)

    start = CALCULATOR_START
    knobs = {
        "model": widgets.Dropdown(options=CALCULATOR_MODELS, value=start["model"], description="model",
                                  style=_LABEL, layout=sized("340px")),
        "method": widgets.ToggleButtons(options=METHODS, value=start["method"], description="method",
                                        style={**_LABEL, "button_width": "72px"},
                                        layout=widgets.Layout(width="400px", display="flex", align_items="center")),
        "dtype": widgets.Dropdown(options=list(DTYPES), value=start["dtype"], description="dtype",
                                  style={"description_width": "50px"}, layout=sized("190px")),
        "optimizer": widgets.Dropdown(options=OPTIMIZERS, value=start["optimizer"], description="optimizer",
                                      style={"description_width": "70px"}, layout=sized("230px")),
        "r": widgets.Dropdown(options=[4, 8, 16, 32, 64, 128], value=start["r"], description="LoRA rank",
                                   style=_LABEL, layout=sized("220px")),
        "target_modules": widgets.Dropdown(options=["q_proj, v_proj", "all-linear"], value=start["target_modules"],
                                           description="LoRA on", style={"description_width": "70px"},
                                           layout=sized("260px")),
        "batch_size": widgets.IntSlider(value=start["batch_size"], min=1, max=32, description="batch",
                                        continuous_update=False, style=_LABEL, layout=sized("480px")),
        "seq_len": widgets.Dropdown(options=[256, 512, 1024, 2048, 4096, 8192], value=start["seq_len"],
                                    description="seq len", style={"description_width": "70px"},
                                    layout=sized("220px")),
        "checkpointing": widgets.Checkbox(value=start["checkpointing"], description="gradient checkpointing",
                                          indent=False, layout=sized("240px")),
        "config": widgets.Textarea(value=start["config"], placeholder="paste the model's config.json here",
                                   description="config.json", style=_LABEL,
                                   layout=widgets.Layout(width="760px", height="8em", display="none")),
    }
    knobs["batch_size"].add_class("qlora-calculator-batch")
    figure, table = widgets.Output(), widgets.Output(layout=widgets.Layout(margin="24px 0 0 12px"))
    figure.add_class("qlora-calculator-figure")
    table.add_class("qlora-calculator-table")

    def redraw(**values) -> None:
        knobs["config"].layout.display = None if values["model"] == YOUR_MODEL else "none"
        try:
            estimate = plot_memory_calculator(**values)  # a new figure, shown in the figure's output below
        except ValueError as error:  # a pasted config that cannot be read: the message, not a traceback
            with figure:
                figure.clear_output()
            with table:
                table.clear_output()
                print(error)
            return
        with figure:  # each output cleared inside its own block: a clear inside another's block goes there
            figure.clear_output(wait=True)
            plt.show()
        with table:
            table.clear_output(wait=True)
            print(breakdown_table(estimate))

    class MemoryCalculator(widgets.VBox):
        def __repr__(self) -> str:  # what a saved notebook shows where the live widget was
            return "memory calculator: run this cell with a live kernel to turn the knobs"

    widgets.interactive_output(redraw, knobs)
    rows = [widgets.HBox([knobs[name] for name in row], layout=widgets.Layout(flex_flow="row wrap"))
            for row in _ROWS]
    drawn = widgets.HBox([figure, table], layout=widgets.Layout(flex_flow="row wrap"))  # narrow: table below
    calculator = MemoryCalculator([*rows, knobs["config"], drawn])
    calculator.add_class("qlora-calculator")
    return calculator
