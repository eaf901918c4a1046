"""The fine-tuning task: questions about the course model's invented countries, split by country.

Each example is a prompt in a fixed question-answer format and a one-word answer:
``Q: What is the capital of Orlania? A:`` -> ``Tarvesk``. The train split asks about 210 countries
(840 questions), the test split about the other 90 (360 questions): a model can only answer the test
questions if it brings the facts from pretraining and learned the format in fine-tuning.

Left out: other tasks and other data sets (nothing can be downloaded offline); any list of
``{"prompt", "answer"}`` pairs works with ``evaluate.exact_match`` and ``train.finetune``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_lessons.course_model.corpus import ATTRIBUTES, load_world, task_examples

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    """One question: the prompt the model sees, the answer it should give, and what it is about."""

    prompt: str
    answer: str
    country: str
    attribute: str

    @property
    def target(self) -> str:
        """The text the model is trained to write after the prompt: `` Tarvesk.``"""
        return f" {self.answer}."


def load_task(split: str = "train") -> list[Example]:
    """The task's questions of one split, in a fixed order.

    Example: ``load_task("test")[0].prompt`` -> ``'Q: What is the capital of Mearnistan? A:'``;
    ``len(load_task("train")), len(load_task("test"))`` -> ``(840, 360)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [Example(**row) for row in task_examples(load_world(), split)]


def describe_task() -> dict[str, int]:
    """Counts a learner wants to see first: questions and countries per split, attributes per country."""
    train, test = load_task("train"), load_task("test")
    return {"train questions": len(train), "train countries": len({e.country for e in train}),
            "test questions": len(test), "test countries": len({e.country for e in test}),
            "attributes per country": len(ATTRIBUTES)}


def with_shots(examples: list[Example], shots: list[Example]) -> list[dict[str, str]]:
    """Few-shot prompting: each example's prompt with solved ``shots`` written in front of it.

    prompt = shot_1.prompt + " " + shot_1.answer + ". " + ... + example.prompt; the answer is unchanged.
    Example: ``with_shots(load_task("test")[:1], load_task("train")[:1])[0]["prompt"]`` ->
    ``'Q: What is the capital of Trunpurnor? A: Griford. Q: What is the capital of Mearnistan? A:'``.
    """
    if not all(isinstance(e, Example) for e in [*examples, *shots]):
        raise TypeError("examples and shots must be lists of data.Example (from load_task)")
    context = "".join(f"{shot.prompt}{shot.target} " for shot in shots)
    return [{"prompt": context + example.prompt, "answer": example.answer} for example in examples]
