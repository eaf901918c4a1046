"""qlora_lessons.exercises: the helpers every lesson's checks share."""

import importlib
import inspect
import math

import pytest
import torch

from qlora_lessons.exercises import (
    NotAnswered,
    agrees,
    attempt,
    close_to,
    is_number,
    report,
    report_error,
    show_solution,
)


def test_report_prints_a_tick_or_a_cross_with_the_hint(capsys):
    assert report("sum", True) is True and capsys.readouterr().out == "✓ sum: correct\n"
    assert report("sum", False, "add them") is False and capsys.readouterr().out == "✗ sum: not yet. Hint: add them\n"


@pytest.mark.parametrize("answer, expected", [(3, True), (2.5, True), (True, False), ("3", False), (None, False),
                                              (Ellipsis, False), (torch.tensor(3.0), False)])
def test_is_number_takes_ints_and_floats_only(answer, expected):
    assert is_number(answer) is expected


def test_close_to_uses_the_tolerance_it_is_given():
    assert close_to(0.9841, 0.984, abs_tol=1e-3) and not close_to(0.9841, 0.984, abs_tol=1e-5)
    assert close_to(1_000_001, 1_000_000, rel_tol=1e-6) and not close_to(1_000_002, 1_000_000, rel_tol=1e-6)
    assert not close_to(1_000_000, 1_000_000.5)  # no tolerance: only the exact value
    assert not close_to(True, 1, abs_tol=1) and not close_to("1", 1, abs_tol=1) and not close_to(math.nan, math.nan)


def reference(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


def template(x):
    ...  # your code


def _raise(error: Exception):
    raise error


CASES = [(torch.arange(4.0),), (torch.ones(2, 3),)]


@pytest.mark.parametrize(
    "fn, exact, ok, printed",
    [
        (lambda x: x * 2, True, True, "✓"),
        (lambda x: x + x + 1e-6, False, True, "✓"),  # within the tolerance
        (lambda x: x + x + 1e-6, True, False, "Hint: double it"),  # but not exactly equal
        (lambda x: (2 * x).flatten(), False, False, "shape (6,) where (2, 3) was expected"),
        (lambda x: x.nope(), False, False, "your function raised AttributeError"),
        (lambda x: ..., False, False, "your function raised"),  # returns Ellipsis: an answer, a wrong one
        (template, False, False, "double: not answered yet: write the function's body"),  # the cell left as it is
        (lambda x: _raise(NotImplementedError()), False, False, "not answered yet"),
        (reference(torch.ones(1)), False, False, "pass your function itself (no brackets), got Tensor"),
    ],
)
def test_agrees_compares_a_function_with_the_reference_on_every_case(fn, exact, ok, printed, capsys):
    assert agrees("double", fn, reference, CASES, "double it", exact=exact) is ok
    assert printed in capsys.readouterr().out


def test_show_solution_prints_the_source_and_refuses_a_non_function(capsys):
    show_solution(reference)
    assert "return 2 * x" in capsys.readouterr().out
    with pytest.raises(TypeError, match="show_solution takes a solution function, got int"):
        show_solution(4)


def test_an_unanswered_number_is_not_answered_yet_not_a_cross(capsys):
    for answer in (..., None):
        assert report("sum", False, "add them", answer=answer) is False
        placeholder = "None" if answer is None else "the ..."
        assert capsys.readouterr().out.startswith(f"… sum: not answered yet: replace {placeholder} with your answer")
    assert report("sum", False, "add them", answer=0) is False and capsys.readouterr().out.startswith("✗ sum: not yet")


def test_attempt_tells_the_template_from_a_failing_function(capsys):
    assert attempt(lambda x: x + 1, 1) == 2
    for fn in (template, lambda x: _raise(NotImplementedError())):
        with pytest.raises(NotAnswered):
            attempt(fn, 1)
    with pytest.raises(ZeroDivisionError):
        attempt(lambda x: x / 0, 1)
    assert report_error("f", ZeroDivisionError("division by zero")) is False
    assert capsys.readouterr().out == "✗ f: not yet. Hint: your function raised ZeroDivisionError: division by zero\n"


@pytest.mark.parametrize("lesson", [f"lesson{n:02d}" for n in range(9)])
def test_every_check_says_not_answered_yet_to_its_untouched_template(lesson, capsys):
    """The exercise cells as a learner first runs them: numbers left as ..., functions whose body is ...
    Each check must say "not answered yet", never a cross or an error of the course's own code."""
    module = importlib.import_module(f"qlora_lessons.exercises.{lesson}")
    checks = [getattr(module, name) for name in dir(module) if name.startswith("check_")]
    assert checks
    for check in checks:
        parameters = [p for p in inspect.signature(check).parameters.values() if p.default is inspect.Parameter.empty]
        takes_function = parameters[0].name in ("fn", "make_prompt")

        def untouched(*args):
            ...  # your code

        assert check(*([untouched] if takes_function else [...] * len(parameters))) is False
        out = capsys.readouterr().out
        assert "not answered yet" in out and "✗" not in out, f"{check.__name__}: {out}"
