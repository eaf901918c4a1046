"""Lesson 01's self-checks accept their solutions and reject wrong answers."""

from qlora_lessons.exercises import lesson01


def test_majority_baseline():
    value = lesson01.solution_majority_baseline()
    assert 0.0 < value < 0.15  # a baseline far below what fine-tuning reaches
    assert lesson01.check_majority_baseline(value)
    assert not lesson01.check_majority_baseline(value + 0.01)
    assert not lesson01.check_majority_baseline(1)


def test_make_prompt():
    assert lesson01.check_make_prompt(lesson01.solution_make_prompt)
    assert not lesson01.check_make_prompt(lambda country, attribute: f"What is the {attribute} of {country}?")
    assert not lesson01.check_make_prompt(lambda country, attribute: 1 / 0)


def test_unseen_countries():
    assert lesson01.check_unseen_countries(lesson01.solution_unseen_countries())
    assert lesson01.solution_unseen_countries() == 0
    assert not lesson01.check_unseen_countries(90)
