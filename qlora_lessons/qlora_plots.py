"""Pictures of a QLoRA run next to LoRA and full fine-tuning: loss curves, memory by kind, answers.

- ``plot_loss_curves(results)``: the training loss of each run, step by step and smoothed.
- ``plot_training_memory(memories)``: stacked bars of the bytes each setup holds, by kind.
- ``answer_table(models, tokenizer, examples)``: each question, its answer and every model's answer.
  (The widget to pick one question and see the answers is ``evaluate.answer_explorer``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from qlora_lessons.evaluate import generate_answers, normalize_answer
from qlora_lessons.qlora_memory import TrainingMemory
from qlora_lessons.train import TrainResult

KINDS = (("weight_bytes", "frozen weights", "tab:gray"), ("constant_bytes", "4-bit constants", "tab:purple"),
         ("trainable_bytes", "trainable", "tab:green"), ("gradient_bytes", "gradients", "tab:orange"),
         ("optimizer_bytes", "optimizer state", "tab:red"))


def _field(example, name: str) -> str:
    return example[name] if isinstance(example, dict) else getattr(example, name)


def plot_loss_curves(results: Mapping[str, TrainResult], window: int = 10):
    """The loss at every step (thin) and its moving average over ``window`` steps (thick), one colour per run.

    Equation: smoothed_t = mean(loss_{t - window + 1} .. loss_t) (fewer terms at the start).
    Shapes: results maps a label to a TrainResult -> a figure with one panel, log-scaled loss.
    Example: ``plot_loss_curves({"QLoRA": result})``.
    """
    import matplotlib.pyplot as plt

    if not results or not all(isinstance(r, TrainResult) for r in results.values()):
        raise TypeError("results must map labels to TrainResult objects (what finetune returns)")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    fig, ax = plt.subplots(figsize=(6.4, 2.8), layout="constrained")
    for label, result in results.items():
        losses = torch.tensor(result.losses)
        sums = torch.cat([torch.zeros(1), losses.cumsum(0)])  # (steps + 1,)
        starts = (torch.arange(1, len(losses) + 1) - window).clamp(min=0)
        smoothed = (sums[1:] - sums[starts]) / (torch.arange(1, len(losses) + 1) - starts)
        line, = ax.plot(losses.numpy(), linewidth=0.6, alpha=0.4)
        ax.plot(smoothed.numpy(), color=line.get_color(), linewidth=2, label=f"{label} (final {result.final_loss:.3f})")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss on the answer tokens")
    ax.legend(fontsize="small")
    plt.close(fig)
    return fig


def plot_training_memory(memories: Mapping[str, TrainingMemory]):
    """Horizontal stacked bars: the bytes of each kind that each setup holds, in MB or GB.

    Shapes: memories maps a label to a TrainingMemory -> a figure with one bar per label.
    Example: ``plot_training_memory({"full": count_training_memory(model, optimizer)})``.
    """
    import matplotlib.pyplot as plt

    if not memories or not all(isinstance(m, TrainingMemory) for m in memories.values()):
        raise TypeError("memories must map labels to TrainingMemory objects (what count_training_memory returns)")
    largest = max(m.total_bytes for m in memories.values())
    scale, unit = (1e9, "GB") if largest >= 1e9 else (1e6, "MB")
    labels = list(memories)[::-1]  # the first label on top
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.5 * len(labels)), layout="constrained")
    left = [0.0] * len(labels)
    for field, name, color in KINDS:
        values = [getattr(memories[k], field) / scale for k in labels]
        ax.barh(labels, values, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, values)]
    for row, total in enumerate(left):
        ax.text(total, row, f" {total:.2f} {unit}", va="center", fontsize="small")
    ax.set(xlabel=unit, title="memory held during training (counted from the tensors)", xlim=(0, 1.25 * max(left)))
    ax.legend(fontsize="x-small", ncol=3, loc="lower right")
    plt.close(fig)
    return fig


def answer_table(models: Mapping[str, torch.nn.Module], tokenizer, examples: Sequence) -> str:
    """A text table: each question, the expected answer, and each model's greedy answer marked right or wrong.

    Example: ``print(answer_table({"base": base, "QLoRA": model}, tokenizer, load_task("test")[:3]))``.
    """
    if not models:
        raise ValueError("models must name at least one model")
    if len(examples) == 0:
        raise ValueError("examples is empty")
    prompts = [_field(e, "prompt") for e in examples]
    answers = {label: generate_answers(model, tokenizer, prompts) for label, model in models.items()}
    width = max(len(p) for p in prompts)
    rows = [f"{'question':<{width}}  {'expected':<10}  " + "  ".join(f"{label:<14}" for label in models)]
    for i, (prompt, example) in enumerate(zip(prompts, examples)):
        expected = normalize_answer(_field(example, "answer"))
        cells = [f"{(answers[label][i] or '(nothing)')[:12]:<12} {'✓' if answers[label][i] == expected else '✗'}"
                 for label in models]
        rows.append(f"{prompt:<{width}}  {expected:<10}  " + "  ".join(cells))
    return "\n".join(rows)
