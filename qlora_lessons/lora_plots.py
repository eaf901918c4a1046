"""Pictures of LoRA's size: trainable parameters against the rank, and a calculator to turn r and alpha.

- ``describe_lora_size(model, target_modules, r, alpha)``: one line with the scaling alpha / r, the
  parameters LoRA adds, their share of the model and the adapter's bytes in 32 and 16 bits.
- ``plot_trainable_vs_rank(model, targets, ranks)``: the trainable share of the model for each rank,
  one line per choice of target layers (Wq, Wv only; all linear layers), with the 2% mark.
- ``lora_calculator(model)``: an ipywidgets calculator over r, alpha and the target layers that shows
  the same line as ``describe_lora_size``.
- ``plot_rank_curve(points)`` and ``plot_alpha_lr_grid(points)``: the sweeps of real runs (``lora_sweeps``),
  held-out exact match against r with seed spread and binomial intervals, and over alpha x learning rate.

Everything is counted from the model's layer shapes (``lora.count_lora_params``): the model is never
changed, so the calculator works for a 7B model as cheaply as for the course model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from qlora_lessons.course_extra import course_import
from qlora_lessons.lora import ALL_LINEAR, count_lora_params, linear_layer_names
from qlora_lessons.lora_count import _human_bytes
from qlora_lessons.renamed_arguments import renamed_arguments

if TYPE_CHECKING:  # matplotlib and ipywidgets are imported when a picture is drawn, not when the course is imported
    import ipywidgets
    from matplotlib.figure import Figure

# Layer names of Llama-style models (transformers' LlamaForCausalLM, Qwen2, Mistral): the usual choices of targets.
LLAMA_TARGETS: dict[str, str | tuple[str, ...]] = {
    "Wq, Wv (the LoRA paper)": ("q_proj", "v_proj"),
    "attention Wq, Wk, Wv, Wo": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear layers": ALL_LINEAR,
}


def targets_of(model: nn.Module) -> dict[str, str | tuple[str, ...]]:
    """The choices of ``LLAMA_TARGETS`` whose layers the model has; "all linear layers" fits every model.

    Example: the course model -> all three; a Phi-3 (one fused ``qkv_proj``) -> ``{"all linear layers": "all-linear"}``.
    """
    leaves = {name.rpartition(".")[2] for name in linear_layer_names(model)}
    return {label: target_modules for label, target_modules in LLAMA_TARGETS.items()
            if target_modules == ALL_LINEAR or set(target_modules) <= leaves}


def _model_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once, as count_trainable


@renamed_arguments(alpha="lora_alpha")
def describe_lora_size(model: nn.Module, target_modules: str | Sequence[str], r: int,
                       lora_alpha: float) -> str:
    """One line: scaling, parameters added, their share of the model with the adapter, adapter bytes.

    Equation: scaling = alpha / r; added = sum over targets of r (in + out); share = added / (model + added),
    as ``count_trainable`` would report after ``add_lora``; bytes = added * 4 (float32) or * 2 (16-bit).
    Shapes: a model in, a string out.
    Example: the course model, ("q_proj", "v_proj"), r=4, lora_alpha=8 -> ``"scaling alpha / r = 2; adds 16,384
    parameters, 0.58% of 2,822,144; adapter 65.54 kB in float32, 32.77 kB in 16 bits"``.
    """
    added = count_lora_params(model, target_modules, r)  # checks the model, the targets and r
    alpha = lora_alpha
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"lora_alpha must be a positive number, got lora_alpha={alpha!r}")
    total = _model_parameters(model) + added
    return (f"scaling alpha / r = {alpha / r:g}; adds {added:,} parameters, {added / total:.2%} of {total:,}; "
            f"adapter {_human_bytes(4 * added)} in float32, {_human_bytes(2 * added)} in 16 bits")


def plot_trainable_vs_rank(model: nn.Module, targets: dict[str, str | Sequence[str]] | None = None,
                           ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)) -> Figure:
    """Plot the share of the model that LoRA trains against the rank r, for each choice of target layers.

    Equation: share(r) = r * sum(in + out) / (model + r * sum(in + out)), over the targeted layers.
    Shapes: one line per entry of ``targets`` (default ``targets_of(model)``), one point per rank.
    Example: ``plot_trainable_vs_rank(model)`` for the course model -> Wq, Wv at r=4 is 0.58%.
    Returns the matplotlib Figure (closed, so a notebook shows it once, as the cell's value): the static
    picture of ``lora_calculator`` for readers whose viewer does not run widgets.
    """
    plt = course_import("matplotlib.pyplot")

    targets = targets_of(model) if targets is None else targets
    if not isinstance(targets, dict) or not targets:
        raise TypeError(f"targets must be a non-empty dict of label -> target_modules, got {targets!r}")
    ranks = list(ranks)
    if not ranks:
        raise ValueError("ranks must not be empty")
    total = _model_parameters(model)
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    for label, target_modules in targets.items():
        added = [count_lora_params(model, target_modules, r) for r in ranks]  # checks every r against the layers
        ax.plot(ranks, [100 * a / (total + a) for a in added], "o-", label=label)
    ax.axhline(2.0, color="grey", linewidth=0.8, linestyle="--", label="2% of the model")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable share of the model (%)",
           title=f"LoRA on a {total / 1e6:.1f}M-parameter model")
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.yaxis.set_major_formatter(lambda value, _position: f"{value:g}")
    ax.legend(fontsize="small")
    plt.close(fig)
    return fig


@renamed_arguments(alpha="lora_alpha")
def lora_calculator(model: nn.Module, r: int = 8, lora_alpha: float = 16,
                    targets: dict[str, str | Sequence[str]] | None = None) -> ipywidgets.VBox:
    """A calculator of LoRA's size: sliders for r and alpha, a menu of target layers, the result in one line.

    Equation: as ``describe_lora_size`` (scaling alpha / r, r (in + out) parameters per targeted layer).
    Shapes: r runs over 1..min(64, the smallest in/out of any linear layer); alpha over 1..128.
    Example: ``lora_calculator(model, r=4, lora_alpha=8)`` -> a widget to display.
    Returns an ipywidgets VBox: ``.children`` are the r slider, the alpha slider, the menu and the caption (HTML).
    """
    widgets = course_import("ipywidgets")

    targets = targets_of(model) if targets is None else targets
    if not isinstance(targets, dict) or not targets:
        raise TypeError(f"targets must be a non-empty dict of label -> target_modules, got {targets!r}")
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)] if isinstance(model, nn.Module) else []
    if not linear:
        raise ValueError(f"model must be a torch.nn.Module with linear layers, got {type(model).__name__}")
    largest_r = min(64, *(min(m.in_features, m.out_features) for m in linear))
    alpha = lora_alpha
    describe_lora_size(model, next(iter(targets.values())), r, alpha)  # check r, alpha and targets before drawing
    if r > largest_r:
        raise ValueError(f"r must be <= {largest_r} for the calculator, got r={r}")
    r_slider = widgets.IntSlider(value=r, min=1, max=largest_r, description="rank r")
    alpha_slider = widgets.FloatSlider(value=alpha, min=1, max=128, step=1, description="alpha")
    menu = widgets.Dropdown(options=list(targets), description="targets")
    caption = widgets.HTML()

    def show(_change: object = None) -> None:
        caption.value = describe_lora_size(model, targets[menu.value], r_slider.value, alpha_slider.value)

    for control in (r_slider, alpha_slider, menu):
        control.observe(show, names="value")
    show()
    return widgets.VBox([r_slider, alpha_slider, menu, caption])


def plot_rank_curve(points: Sequence, title: str = "held-out exact match against the rank") -> Figure:
    """Mean held-out exact match against r (log axis), with two error bars per rank.

    Thick bars: +- one standard deviation over seeds; thin caps: the Wilson 95% interval of one run on 360
    questions (``lora_sweeps.summarize``). ``points`` are ``SweepPoint``s of one sweep, several seeds per r.
    Example: ``plot_rank_curve(select(load_sweeps(), "rank"))`` -> a Figure.
    """
    plt = course_import("matplotlib.pyplot")

    from qlora_lessons.lora_sweeps import summarize

    ranks = sorted({p.r for p in points})
    if not ranks:
        raise ValueError("points is empty")
    stats = [summarize([p for p in points if p.r == r]) for r in ranks]
    fig, ax = plt.subplots(figsize=(5.5, 3.0), layout="constrained")
    means = [s.mean for s in stats]
    binomial = [[m - s.low for m, s in zip(means, stats)], [s.high - m for m, s in zip(means, stats)]]
    ax.errorbar(ranks, means, yerr=binomial,
                fmt="none", ecolor="grey", capsize=4, linewidth=0.8, label="95% binomial interval, one run")
    ax.errorbar(ranks, means, yerr=[s.std for s in stats], fmt="o-", capsize=0, linewidth=2,
                label=f"mean +- std over {stats[0].seeds} seeds")
    ax.set(xscale="log", xticks=ranks, xticklabels=[str(r) for r in ranks], xlabel="rank r (all linear layers)",
           ylabel="held-out exact match", title=title)
    ax.legend(fontsize="small", loc="lower right")
    plt.close(fig)
    return fig


def plot_alpha_lr_grid(points: Sequence, title: str = "held-out exact match, r = 4") -> Figure:
    """A heat map of held-out exact match over alpha (rows) and learning rate (columns), values written in.

    Example: ``plot_alpha_lr_grid(select(load_sweeps(), "alpha_lr"))`` -> a Figure.
    """
    plt = course_import("matplotlib.pyplot")

    alphas, lrs = sorted({p.alpha for p in points}), sorted({p.lr for p in points})
    if not alphas:
        raise ValueError("points is empty")
    grid = [[next((p.em for p in points if p.alpha == a and p.lr == lr), float("nan")) for lr in lrs] for a in alphas]
    fig, ax = plt.subplots(figsize=(4.6, 2.8), layout="constrained")
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
    for i, row in enumerate(grid):
        for j, em in enumerate(row):
            ax.text(j, i, f"{em:.0%}", ha="center", va="center", color="white" if em < 0.6 else "black")
    r = points[0].r
    ax.set(xticks=range(len(lrs)), xticklabels=[f"{lr:g}" for lr in lrs], xlabel="learning rate",
           yticks=range(len(alphas)), yticklabels=[f"{a:g} (x{a / r:g})" for a in alphas],
           ylabel="alpha (scaling)", title=title)
    fig.colorbar(image, ax=ax, label="exact match")
    plt.close(fig)
    return fig
