"""Score a model on the task: greedy answers and exact match.

exact_match = (number of questions whose normalized answer equals the expected one) / (questions)

The model writes after each prompt with greedy decoding (``generate`` with ``do_sample=False``); the
answer is the text before the first full stop or line break, with spaces trimmed. Exact match is
strict: ``Tarvesk`` is right, ``Tarvesk city`` and ``tarvesk`` are wrong.

Left out: partial credit and sampling; the task's answers are single words.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from qlora_lessons.course_extra import course_import


def normalize_answer(text: str) -> str:
    """The answer part of generated text: up to the first ``.`` or newline, spaces trimmed.

    Example: ``" Tarvesk . Q :"`` -> ``"Tarvesk"``.
    """
    return " ".join(text.split("\n")[0].split(".")[0].split())


def _field(example, name: str) -> str:
    return example[name] if isinstance(example, dict) else getattr(example, name)


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 8, batch_size: int = 128,
                     progress: bool = False, normalize: bool = True) -> list[str]:
    """Greedy continuations of ``prompts``, one string per prompt: the answer part (``normalize_answer``),
    or with ``normalize=False`` everything the model wrote in ``max_new_tokens`` tokens."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if max_new_tokens <= 0 or batch_size <= 0:
        raise ValueError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="answering", disable=not progress, leave=False):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True).to(device)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]  # (B, new): what the model wrote
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers += [normalize_answer(text) if normalize else text for text in texts]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


def exact_match(model, tokenizer, examples: Sequence, *, max_new_tokens: int = 8, batch_size: int = 128,
                progress: bool = False) -> float:
    """Fraction of ``examples`` (``Example`` or ``{"prompt", "answer"}``) answered exactly right.

    Example: a model that answers 3 of 4 questions right -> ``0.75``.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty: exact match of no questions is undefined")
    predictions = generate_answers(model, tokenizer, [_field(e, "prompt") for e in examples],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    correct = sum(p == normalize_answer(_field(e, "answer")) for p, e in zip(predictions, examples))
    return correct / len(examples)


def probe_knowledge(model, tokenizer, split: str = "test", *, batch_size: int = 128) -> float:
    """Fraction of a split's facts the model completes from a prose prompt (greedy, next word only).

    The prompt is the first pretraining sentence form cut before the value:
    ``The capital of Orlania is`` -> ``Tarvesk``. A model that scores high here but zero on the
    question format knows the facts and not the task.
    """
    from qlora_lessons.course_model.corpus import ATTRIBUTES, FACT_TEMPLATES, load_world

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    world = load_world()
    test_names = set(world["test_names"])
    countries = [c for c in world["countries"] if (c["name"] in test_names) == (split == "test")]
    prompts, answers = [], []
    for attribute in ATTRIBUTES:
        prefix = FACT_TEMPLATES[attribute][0].split("{value}")[0].rstrip()
        prompts += [prefix.format(name=country["name"]) for country in countries]
        answers += [country[attribute] for country in countries]
    predictions = generate_answers(model, tokenizer, prompts, max_new_tokens=1, batch_size=batch_size)
    return sum(p == a for p, a in zip(predictions, answers)) / len(answers)


def exact_match_by(model, tokenizer, examples: Sequence, key: str = "attribute", **kwargs) -> dict[str, float]:
    """Exact match per group of examples (per ``attribute`` by default), in the order groups first appear.

    Example: -> ``{"capital": 0.91, "continent": 0.97, "language": 0.88, "currency": 0.9}``.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty")
    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(_field(example, key), []).append(example)
    return {name: exact_match(model, tokenizer, members, **kwargs) for name, members in groups.items()}


def plot_exact_match(scores: dict[str, dict[str, float]], title: str = "Held-out exact match",
                     reference: dict[str, float] | None = None):
    """Grouped bars: one group per attribute, one bar per model; ``reference`` draws a dashed tick per group.

    ``scores`` maps a model name to ``exact_match_by`` output. Returns the figure.
    """
    plt = course_import("matplotlib.pyplot")

    if not scores:
        raise ValueError("scores is empty")
    groups = list(next(iter(scores.values())))
    width = 0.8 / len(scores)
    fig, ax = plt.subplots()
    for i, (name, by_group) in enumerate(scores.items()):
        xs = [g + (i - (len(scores) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [by_group[group] for group in groups], width=width, label=name)
    if reference is not None:
        for g, group in enumerate(groups):
            ax.hlines(reference[group], g - 0.45, g + 0.45, colors="black", linestyles="dashed",
                      label="always the commonest answer" if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylim=(0, 1.05), ylabel="exact match", title=title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


def answer_explorer(models: dict, tokenizer, examples: Sequence):
    """A widget: pick a question, see each model's greedy answer next to the expected one.

    ``models`` maps a name to a model; ``examples`` are the questions offered in the drop-down.
    """
    widgets = course_import("ipywidgets")

    if not models or len(examples) == 0:
        raise ValueError("answer_explorer needs at least one model and one example")
    picker = widgets.Dropdown(options=[(_field(e, "prompt"), i) for i, e in enumerate(examples)],
                              description="question", layout=widgets.Layout(width="95%"))
    shown = widgets.HTML()

    def show(change=None) -> None:
        example = examples[picker.value]
        rows = [f"<tr><td>{name}</td><td><b>{generate_answers(model, tokenizer, [_field(example, 'prompt')])[0]}"
                f"</b></td></tr>" for name, model in models.items()]
        shown.value = (f"<table>{''.join(rows)}<tr><td>expected</td><td><b>{_field(example, 'answer')}</b>"
                       f"</td></tr></table>")

    picker.observe(show, names="value")
    show()
    return widgets.VBox([picker, shown])
