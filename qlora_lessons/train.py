"""A small fine-tuning loop for the lessons: full fine-tuning, LoRA and QLoRA all go through it.

Each step takes a batch of examples, builds ``prompt + target`` token sequences, and minimises the
next-token loss on the target tokens only (the prompt's labels are -100: the model is taught to
answer, not to ask):

    loss = - mean over answer tokens of log p(token | everything before it)

Only parameters with ``requires_grad`` are trained, so freezing (LoRA) is decided by the model, not
here. The learning rate warms up linearly, then stays constant or decays on a cosine.

Left out: gradient accumulation, mixed-precision autocast and distributed training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from qlora_lessons.course_extra import course_import

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainResult:
    """What a fine-tuning run did: the loss at every step, its duration and how much data it used."""

    losses: tuple[float, ...]
    seconds: float
    steps: int
    examples_seen: int
    trainable_parameters: int
    eval_losses: tuple[tuple[int, float], ...] = ()  # (step, held-out answer loss), with ``eval_examples``

    def __repr__(self) -> str:
        return (f"TrainResult(steps={self.steps}, final loss={self.final_loss:.3f}, {self.seconds:.1f} s, "
                f"{self.examples_seen} examples seen, {self.trainable_parameters:,} trainable parameters)")

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (single steps are noisy)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


def _field(example, name: str) -> str:
    return example[name] if isinstance(example, dict) else getattr(example, name)


def encode_examples(tokenizer, examples: Sequence) -> list[tuple[list[int], list[int]]]:
    """Token ids of each example as ``(input_ids, labels)``, labels -100 on the prompt.

    The target is `` answer.`` followed by the end-of-sequence token:
    ``Q: ... A:`` + `` Tarvesk.`` -> labels ``[-100, ..., -100, id(Tarvesk), id(.), id(<eos>)]``.
    """
    encoded = []
    for example in examples:
        prompt, answer = _field(example, "prompt"), _field(example, "answer")
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(f"{prompt} {answer}.")["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:  # a tokenizer that merges across the boundary
            full_ids = prompt_ids + tokenizer(f" {answer}.", add_special_tokens=False)["input_ids"]
        full_ids = full_ids + [tokenizer.eos_token_id]
        encoded.append((full_ids, [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]))
    return encoded


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask`` and ``labels``, each of shape (B, T)."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, target) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(target)] = torch.tensor(target)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def answer_loss(model: torch.nn.Module, tokenizer, examples: Sequence, *, batch_size: int = 128) -> float:
    """Mean next-token loss on the answer tokens of ``examples``, without training (a held-out loss).

    loss = - sum over answer tokens of log p(token | everything before it) / number of answer tokens,
    the loss ``finetune`` minimises, here weighted by tokens over all examples, not averaged per batch.
    Shapes: each batch's logits (B, T, V) against its labels shifted by one, (B, T-1); returns a float.
    Example: ``answer_loss(model, tokenizer, load_task("test"))`` -> about 4.6 for the pretrained course model,
    under 0.2 after lesson 01's fine-tuning.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    encoded, total, count = encode_examples(tokenizer, examples), 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start:start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits  # (B, T, V)
        targets = batch["labels"][:, 1:].to(device)  # (B, T-1): token t is predicted at position t-1
        keep = targets != -100
        total += torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep],
                                                   reduction="sum").item()
        count += int(keep.sum())
    model.train(was_training)
    return total / count


def learning_rate_at(step: int, steps: int, lr: float, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to zero at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def finetune(model: torch.nn.Module, tokenizer, examples: Sequence, *, steps: int = 150, lr: float = 1e-3,
             batch_size: int = 32, weight_decay: float = 0.0, warmup: int = 10, schedule: str = "cosine",
             optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = 1.0, seed: int | None = None,
             progress: bool = True, desc: str = "fine-tuning", eval_examples: Sequence | None = None,
             eval_every: int = 10) -> TrainResult:
    """Fine-tune the trainable parameters of ``model`` on ``examples`` for ``steps`` steps.

    ``optimizer=None`` uses ``torch.optim.AdamW(trainable, lr, weight_decay)``; pass another (a
    paged 8-bit AdamW, say) to use it; its learning rate still follows ``schedule``. Batches are
    drawn without replacement, reshuffled every epoch, from a generator seeded with ``seed``
    (``None``: torch's seed, ``torch.initial_seed()``, which ``setup_lesson(seed)`` sets); dropout draws
    from the same seed. The model is left in eval mode. With ``eval_examples``, ``answer_loss`` on them
    is recorded before the first step, every ``eval_every`` steps and after the last one
    (``TrainResult.eval_losses``); it draws no random numbers, and its time is not in ``seconds``.

    Example: ``finetune(model, tokenizer, load_task("train"), steps=150, lr=1e-3)`` -> a ``TrainResult``.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty")
    if steps <= 0 or batch_size <= 0 or warmup < 0:
        raise ValueError(f"steps and batch_size must be positive and warmup >= 0, got {steps}, {batch_size}, {warmup}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if eval_examples is not None and (len(eval_examples) == 0 or eval_every <= 0):
        raise ValueError(f"eval_examples must be non-empty and eval_every positive, got {len(eval_examples)} "
                         f"examples and eval_every={eval_every}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (everything has requires_grad=False)")
    optimizer = optimizer or torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    encoded = encode_examples(tokenizer, examples)
    device = next(model.parameters()).device
    seed = torch.initial_seed() if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    order: list[int] = []
    losses, evals, eval_seconds, start = [], [], 0.0, time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    for step in bar:
        if eval_examples is not None and step % eval_every == 0:
            tick = time.perf_counter()
            evals.append((step, answer_loss(model, tokenizer, eval_examples)))
            eval_seconds += time.perf_counter() - tick
        if len(order) < batch_size:
            order = torch.randperm(len(encoded), generator=generator).tolist()
        batch_ids, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in batch_ids], tokenizer.pad_token_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, steps, lr, warmup, schedule)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    seconds = time.perf_counter() - start - eval_seconds
    if eval_examples is not None:
        evals.append((steps, answer_loss(model, tokenizer, eval_examples)))
    model.eval()
    return TrainResult(losses=tuple(losses), seconds=seconds, steps=steps, examples_seen=steps * batch_size,
                       trainable_parameters=sum(p.numel() for p in trainable), eval_losses=tuple(evals))


def plot_loss_curves(curves, *, window: int = 1, difference: bool = False, title: str = "Training loss"):
    """The loss at every step of one or more runs, on a log scale; one figure for every lesson.

    ``curves`` maps a label to a ``TrainResult`` (its label then shows the final loss) or to a sequence
    of losses; a ``TrainResult`` with ``eval_losses`` adds its held-out loss, dashed, in the same colour.
    With ``window`` > 1 each run is drawn thin, with its moving average thick:
    smoothed_t = mean(loss_{t - window + 1} .. loss_t) (fewer terms at the start). With
    ``difference=True`` a second panel shows every run minus the first one.
    Example: ``plot_loss_curves({"full": full_run, "LoRA": lora_run}, window=10)`` -> a Figure.
    """
    plt = course_import("matplotlib.pyplot")

    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must map at least one label to a TrainResult or a sequence of losses")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    losses = {}
    for label, curve in curves.items():
        values = curve.losses if isinstance(curve, TrainResult) else curve
        if isinstance(values, (str, bytes)) or len(values) == 0:
            raise ValueError(f"curve {label!r} has no losses")
        losses[label] = [float(v) for v in values]
    fig, axes = plt.subplots(1, 2 if difference else 1, figsize=(8.0 if difference else 6.4, 3.0), squeeze=False)
    ax = axes[0, 0]
    for label, values in losses.items():
        name = label + (f" (final {curves[label].final_loss:.3f})" if isinstance(curves[label], TrainResult) else "")
        if window == 1:
            line, = ax.plot(range(1, len(values) + 1), values, label=name, linewidth=1)
        else:
            line, = ax.plot(range(1, len(values) + 1), values, linewidth=0.6, alpha=0.4)
            smoothed = [sum(values[max(0, t - window + 1): t + 1]) / (t + 1 - max(0, t - window + 1))
                        for t in range(len(values))]
            ax.plot(range(1, len(values) + 1), smoothed, color=line.get_color(), linewidth=2, label=name)
        held_out = curves[label].eval_losses if isinstance(curves[label], TrainResult) else ()
        if held_out:  # the loss after `step` steps is drawn at step (step 0: before training, at 1 on the axis)
            ax.plot([max(1, step) for step, _ in held_out], [loss for _, loss in held_out], linestyle="--",
                    marker=".", color=line.get_color(), label=f"{label}, held out (final {held_out[-1][1]:.3f})")
    ax.set(xlabel="step", ylabel="loss on answer tokens", yscale="log", title=title)
    if any(isinstance(curve, TrainResult) and curve.eval_losses for curve in curves.values()):
        fig.set_size_inches(9.0, 3.0)  # twice the curves: the legend goes beside the plot, not over it
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize="small")
    if difference:
        (first_label, first), *others = losses.items()
        right = axes[0, 1]
        for label, values in others:
            n = min(len(values), len(first))
            gaps = [a - b for a, b in zip(values[:n], first[:n])]
            right.plot(range(1, n + 1), gaps, label=f"{label} - {first_label}")
        right.axhline(0.0, color="gray", linewidth=0.5)
        right.set(xlabel="step", ylabel="loss difference", title=f"difference from {first_label}")
        right.legend(fontsize="small")
    fig.tight_layout()
    plt.close(fig)  # returned, so a notebook cell shows it once
    return fig
