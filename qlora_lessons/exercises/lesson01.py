"""Exercises of lesson 01 (why fine-tune): the task, its split, and the baselines a score is compared with."""

from __future__ import annotations

from collections import Counter

from qlora_lessons.data import load_task
from qlora_lessons.exercises import report


def solution_majority_baseline() -> float:
    """Exact match on the test questions of a 'model' that always gives the most common training answer
    of each attribute (a continent question answered with the commonest continent, and so on)."""
    train, test = load_task("train"), load_task("test")
    commonest = {}
    for attribute in {e.attribute for e in train}:
        commonest[attribute] = Counter(e.answer for e in train if e.attribute == attribute).most_common(1)[0][0]
    return sum(commonest[e.attribute] == e.answer for e in test) / len(test)


def check_majority_baseline(answer: float) -> bool:
    """Your number: the held-out exact match of always answering the commonest training answer per attribute."""
    expected = solution_majority_baseline()
    return report("majority baseline", isinstance(answer, float) and abs(answer - expected) < 1e-9,
                  "count each attribute's answers in load_task('train'), then score load_task('test')")


def solution_make_prompt(country: str, attribute: str) -> str:
    """The task's prompt for one question, e.g. ('Orlania', 'capital') -> 'Q: What is the capital of Orlania? A:'."""
    from qlora_lessons.course_model.corpus import QUESTION_TEMPLATES

    return QUESTION_TEMPLATES[attribute].format(name=country)


def check_make_prompt(make_prompt) -> bool:
    """Your function ``make_prompt(country, attribute)`` must write prompts exactly as the task does."""
    examples = load_task("test")[::37]
    try:
        ok = all(make_prompt(e.country, e.attribute) == e.prompt for e in examples)
    except Exception as error:  # a learner's function may raise anything; report it as a hint
        return report("make_prompt", False, f"your function raised {type(error).__name__}: {error}")
    return report("make_prompt", ok, "compare with load_task('train')[0].prompt, spaces and punctuation included")


def solution_unseen_countries() -> int:
    """How many test countries also appear in a training question? (The split is by country.)"""
    return len({e.country for e in load_task("test")} & {e.country for e in load_task("train")})


def check_unseen_countries(answer: int) -> bool:
    """Your count of test countries that training questions also ask about."""
    return report("unseen countries", answer == solution_unseen_countries(),
                  "build the sets of e.country for both splits and intersect them")
