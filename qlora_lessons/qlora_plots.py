"""Pictures of a QLoRA run next to LoRA and full fine-tuning: memory by kind, and the answers.

- ``plot_training_memory(memories)``: stacked bars of the bytes each setup holds, by kind.
- ``answer_table(models, tokenizer, examples)``: each question, its answer and every model's answer.
  (The widget to pick one question and see the answers is ``evaluate.answer_explorer``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from qlora_lessons.course_extra import course_import
from qlora_lessons.evaluate import generate_answers, normalize_answer
from qlora_lessons.qlora_memory import TrainingMemory

KINDS = (("weight_bytes", "frozen weights", "tab:gray"), ("constant_bytes", "4-bit constants", "tab:purple"),
         ("trainable_bytes", "trainable", "tab:green"), ("gradient_bytes", "gradients", "tab:orange"),
         ("optimizer_bytes", "optimizer state", "tab:red"))


def _field(example, name: str) -> str:
    return example[name] if isinstance(example, dict) else getattr(example, name)


def plot_training_memory(memories: Mapping[str, TrainingMemory]):
    """Horizontal stacked bars: the bytes of each kind that each setup holds, in MB or GB.

    Shapes: memories maps a label to a TrainingMemory -> a figure with one bar per label.
    Example: ``plot_training_memory({"full": count_training_memory(model, optimizer)})``.
    """
    plt = course_import("matplotlib.pyplot")

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
