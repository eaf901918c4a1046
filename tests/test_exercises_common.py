"""qlora_lessons.exercises: the helpers every lesson's checks share."""

import math

import pytest
import torch

from qlora_lessons.exercises import agrees, close_to, is_number, report, show_solution


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


CASES = [(torch.arange(4.0),), (torch.ones(2, 3),)]


@pytest.mark.parametrize(
    "fn, exact, ok, printed",
    [
        (lambda x: x * 2, True, True, "✓"),
        (lambda x: x + x + 1e-6, False, True, "✓"),  # within the tolerance
        (lambda x: x + x + 1e-6, True, False, "Hint: double it"),  # but not exactly equal
        (lambda x: (2 * x).flatten(), False, False, "shape (6,) where (2, 3) was expected"),
        (lambda x: x.nope(), False, False, "your function raised AttributeError"),
        (lambda x: ..., False, False, "your function raised"),  # the exercise cell left as it is
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
