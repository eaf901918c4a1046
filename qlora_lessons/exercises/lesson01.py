"""Exercises of lesson 01 (why fine-tune): the baselines a score is compared with, prompting, forgetting.

Exercises 1-3 are "predict, then run": write down a prediction, compute or measure the number, and
pass both to the check; it grades the number and says how far the prediction was.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from qlora_lessons.data import load_task, with_shots
from qlora_lessons.exercises import attempt, is_number, report, report_error
from qlora_lessons.exercises.lesson00 import graded


def solution_best_blind_guess() -> float:
    """Exact match on the test questions of the best answer that ignores the country: for each attribute,
    the commonest answer among the *test* questions themselves (an upper bound for any such guess)."""
    test = load_task("test")
    commonest = {}
    for attribute in {e.attribute for e in test}:
        commonest[attribute] = Counter(e.answer for e in test if e.attribute == attribute).most_common(1)[0][0]
    return sum(commonest[e.attribute] == e.answer for e in test) / len(test)


def check_best_blind_guess(answer: float, prediction: object = None) -> bool:
    """Your exact match of always giving the commonest test answer of each attribute (within 0.0005)."""
    return graded("best blind guess", answer, solution_best_blind_guess(), prediction,
                  "count each attribute's answers in load_task('test'), take the commonest, score load_task('test'); "
                  "give the fraction to at least three decimals", rel_tol=0.0005 / solution_best_blind_guess())


@lru_cache(maxsize=4)  # the check recomputes it; the loss of a fixed model does not change
def solution_few_shot_loss(shots: int = 8) -> float:
    """The pretrained course model's loss on the answer tokens of the test questions, with the first ``shots``
    training questions and their answers in front of each (``data.with_shots``, ``train.answer_loss``)."""
    from qlora_lessons.models import load_model
    from qlora_lessons.train import answer_loss

    model, tokenizer = load_model("course-model")
    return answer_loss(model, tokenizer, with_shots(load_task("test"), load_task("train")[:shots]))


def check_few_shot_loss(answer: float, shots: int = 8, prediction: object = None) -> bool:
    """Your measured held-out answer loss with ``shots`` shots, recomputed here on the pretrained model."""
    if not isinstance(shots, int) or not 0 <= shots <= 16:
        raise ValueError(f"shots must be an int from 0 to 16, got {shots!r}")
    hint = f"answer_loss(base_model, tokenizer, with_shots(test, train[:{shots}])) on the pretrained model"
    if not is_number(answer):
        return report(f"{shots}-shot answer loss", False, hint, answer=answer)
    return graded(f"{shots}-shot answer loss", answer, solution_few_shot_loss(shots), prediction, hint, rel_tol=1e-4)


def solution_probe_after_finetuning(lr: float = 3e-3, steps: int = 150):
    """A fresh pretrained course model fully fine-tuned at ``lr``; returns it and its probe of test facts."""
    from qlora_lessons.evaluate import probe_knowledge
    from qlora_lessons.models import load_model
    from qlora_lessons.train import finetune

    model, tokenizer = load_model("course-model")
    finetune(model, tokenizer, load_task("train"), steps=steps, lr=lr, progress=False)
    return model, probe_knowledge(model, tokenizer, "test")


def check_probe_after_finetuning(model, answer: float, prediction: object = None) -> bool:
    """Your fine-tuned model and its probe score: the model must answer the task's training questions
    (at least half of them: it was fine-tuned), and the probe is recomputed on it."""
    from qlora_lessons.evaluate import exact_match, probe_knowledge
    from qlora_lessons.models import load_model

    if not hasattr(model, "generate"):
        return report("probe after fine-tuning", False, "pass the fine-tuned model itself as the first argument",
                      answer=model)
    _, tokenizer = load_model("course-model")
    if exact_match(model, tokenizer, load_task("train")[::20]) < 0.5:  # 240 questions: enough to tell
        return report("probe after fine-tuning", False, "fine-tune the model first: finetune(model_3, tokenizer, "
                      "train, steps=FULL_STEPS, lr=3e-3), until it answers the training questions", answer=model)
    if not is_number(answer):
        return report("probe after fine-tuning", False, "answer_3 = probe_knowledge(model_3, tokenizer, 'test')",
                      answer=model)
    return graded("probe after fine-tuning", answer, probe_knowledge(model, tokenizer, "test"), prediction,
                  "probe_knowledge(model_3, tokenizer, 'test'), on the model you fine-tuned", rel_tol=1e-9)


def solution_make_prompt(country: str, attribute: str) -> str:
    """The task's prompt for one question, e.g. ('Orlania', 'capital') -> 'Q: What is the capital of Orlania? A:'."""
    from qlora_lessons.course_model.corpus import QUESTION_TEMPLATES

    return QUESTION_TEMPLATES[attribute].format(name=country)


def check_make_prompt(make_prompt) -> bool:
    """Your function ``make_prompt(country, attribute)`` must write prompts exactly as the task does."""
    examples = load_task("test")[::37]
    try:
        ok = all(attempt(make_prompt, e.country, e.attribute) == e.prompt for e in examples)
    except Exception as error:  # a learner's function may raise anything; report it as a hint
        return report_error("make_prompt", error)
    return report("make_prompt", ok, "compare with load_task('train')[0].prompt, spaces and punctuation included")
