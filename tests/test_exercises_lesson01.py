"""Lesson 01's self-checks accept their solutions and reject wrong answers."""

import pytest

from qlora_lessons.exercises import lesson01


def test_best_blind_guess_rejects_the_training_majority_printed_in_the_lesson():
    value = lesson01.solution_best_blind_guess()
    assert 0.0 < value < 0.2  # a baseline far below what fine-tuning reaches
    assert lesson01.check_best_blind_guess(value, prediction=0.05)
    assert lesson01.check_best_blind_guess(round(value, 3))  # three decimals are enough
    assert not lesson01.check_best_blind_guess(16 / 360)  # the commonest *training* answers: another number
    assert not lesson01.check_best_blind_guess(...) and not lesson01.check_best_blind_guess(True)


def test_few_shot_loss_is_recomputed_for_the_number_of_shots():
    value = lesson01.solution_few_shot_loss(1)
    assert 0.0 < value < 20.0
    assert lesson01.check_few_shot_loss(value, shots=1, prediction=4.0)
    assert not lesson01.check_few_shot_loss(value * 1.01, shots=1)
    assert not lesson01.check_few_shot_loss(lesson01.solution_few_shot_loss(0), shots=1)  # no shots: another loss
    assert not lesson01.check_few_shot_loss(..., shots=1)
    with pytest.raises(ValueError, match="shots"):
        lesson01.check_few_shot_loss(value, shots=100)


def test_probe_after_finetuning_needs_a_finetuned_model():
    from qlora_lessons.models import load_model

    model, probe = lesson01.solution_probe_after_finetuning(lr=1e-3, steps=40)  # short: enough to learn the format
    assert lesson01.check_probe_after_finetuning(model, probe, prediction=0.5)
    assert not lesson01.check_probe_after_finetuning(model, probe + 0.01)
    assert not lesson01.check_probe_after_finetuning(load_model("course-model")[0], 0.97)  # not fine-tuned
    assert not lesson01.check_probe_after_finetuning(..., probe)


def test_make_prompt():
    assert lesson01.check_make_prompt(lesson01.solution_make_prompt)
    assert not lesson01.check_make_prompt(lambda country, attribute: f"What is the {attribute} of {country}?")
    assert not lesson01.check_make_prompt(lambda country, attribute: 1 / 0)
