"""Self-check functions for the exercises at the end of each lesson, and their solutions.

Each lesson has a module here (``lesson05`` for ``05_nf4_by_hand``) with pairs of functions:
``check_<name>(answer)`` grades a learner's answer (a number or a function) and prints what is
right or wrong; ``solution_<name>`` is a worked solution, which ``show_solution`` prints.
Instructors: the tests call every check on its solution (must pass) and on a wrong answer (must fail).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeGuard

import torch

_NO_ANSWER = object()  # report's default: the check grades something other than a typed-in answer


class NotAnswered(Exception):
    """Raised by ``attempt`` when a learner's function is still the exercise's template (its body ``...``)."""


def unanswered(answer: object) -> bool:
    """True for what an exercise template holds before the learner writes anything: ``...`` or ``None``."""
    return answer is Ellipsis or answer is None


def report(name: str, ok: bool, hint: str = "", *, answer: object = _NO_ANSWER) -> bool:
    """Print one line, a tick, a cross with a hint, or "not answered yet"; return ``ok`` (False when unanswered).

    ``answer``: the learner's answer, when the check grades one; ``...`` or ``None`` (the template as it
    is) prints ``… name: not answered yet`` instead of a cross. Example: ``report("absmax", False, "divide
    by the largest |x|")`` prints ``✗ absmax: not yet. Hint: divide by the largest |x|`` and returns ``False``;
    ``report("absmax", False, answer=...)`` prints ``… absmax: not answered yet: replace the ... with your
    answer and run the cell again.``
    """
    if answer is not _NO_ANSWER and unanswered(answer):
        placeholder = "None" if answer is None else "the ..."
        print(f"… {name}: not answered yet: replace {placeholder} with your answer and run the cell again."
              + (f" Hint: {hint}" if hint else ""))
        return False
    if ok:
        print(f"✓ {name}: correct")
    else:
        print(f"✗ {name}: not yet." + (f" Hint: {hint}" if hint else ""))
    return bool(ok)


def attempt(fn: Callable, *args: object) -> Any:  # a learner's answer: any type, checked by the caller
    """Call a learner's function; raise ``NotAnswered`` if it is the untouched template.

    Untouched means it returns ``None`` (a body that is only ``...`` or ``return None``) or raises
    ``NotImplementedError``. Checks call ``attempt(fn, x)`` where they would call ``fn(x)``, inside the
    ``try`` whose ``except Exception as error`` ends in ``return report_error(name, error)``.
    """
    try:
        result = fn(*args)
    except NotImplementedError:
        raise NotAnswered from None
    if result is None:
        raise NotAnswered
    return result


def report_error(name: str, error: Exception) -> bool:
    """Report a learner's function that failed: "not answered yet" for the template (``NotAnswered``), else
    the error's type and message as the hint (the cell does not crash). Returns False."""
    if isinstance(error, NotAnswered):
        print(f"… {name}: not answered yet: write the function's body (it still returns None) and run the cell again")
        return False
    return report(name, False, f"your function raised {type(error).__name__}: {error}")


def is_number(answer: object) -> TypeGuard[int | float]:
    """True for an int or a float (not a bool): what a numeric answer must be before it is compared."""
    return isinstance(answer, (int, float)) and not isinstance(answer, bool)


def close_to(answer: object, expected: float, *, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """``answer`` is a number within ``rel_tol`` (relative) or ``abs_tol`` (absolute) of ``expected``.

    Example: ``close_to(0.984, 0.9840001, abs_tol=1e-6) -> True``; ``close_to("0.984", 0.984) -> False``.
    """
    return is_number(answer) and math.isclose(answer, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def agrees(name: str, fn: Callable, reference: Callable, cases: list[tuple], hint: str, *, exact: bool = False,
           atol: float = 1e-4) -> bool:
    """Call a learner's ``fn`` and ``reference`` on each case; report whether the results agree.

    Agree means the same shape and, with ``exact``, the same values (``torch.equal``), else values within
    ``atol`` plus a relative 1e-4. A function that raises is reported with its error, not raised; the untouched template
    (returning None) is reported as not answered yet (``attempt``).
    """
    if not callable(fn):
        return report(name, False, f"pass your function itself (no brackets), got {type(fn).__name__}")
    for case in cases:
        expected = torch.as_tensor(reference(*case))
        try:
            got = torch.as_tensor(attempt(fn, *case))
        except Exception as error:  # a learner's function can fail in any way; say how, do not crash the cell
            return report_error(name, error)
        if got.shape != expected.shape:
            return report(name, False, f"shape {tuple(got.shape)} where {tuple(expected.shape)} was expected. {hint}")
        got = got.to(expected.dtype)
        if not (torch.equal(got, expected) if exact else torch.allclose(got, expected, rtol=1e-4, atol=atol)):
            return report(name, False, hint)
    return report(name, True)


def show_solution(solution: Callable) -> None:
    """Print the source code of a solution function (``lesson05.solution_absmax_int8``, say)."""
    if not callable(solution):
        raise TypeError(f"show_solution takes a solution function, got {type(solution).__name__}")
    print(inspect.getsource(solution))
