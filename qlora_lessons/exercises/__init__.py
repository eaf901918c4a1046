"""Self-check functions for the exercises at the end of each lesson, and their solutions.

Each lesson has a module here (``lesson05`` for ``05_nf4_by_hand``) with pairs of functions:
``check_<name>(answer)`` grades a learner's answer (a number or a function) and prints what is
right or wrong; ``solution_<name>`` is a worked solution, which ``show_solution`` prints.
Instructors: the tests call every check on its solution (must pass) and on a wrong answer (must fail).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable


def report(name: str, ok: bool, hint: str = "") -> bool:
    """Print one line, a tick or a cross with a hint, and return ``ok``.

    Example: ``report("absmax", False, "divide by the largest |x|")`` prints
    ``✗ absmax: not yet. Hint: divide by the largest |x|`` and returns ``False``.
    """
    if ok:
        print(f"✓ {name}: correct")
    else:
        print(f"✗ {name}: not yet." + (f" Hint: {hint}" if hint else ""))
    return bool(ok)


def show_solution(solution: Callable) -> None:
    """Print the source code of a solution function (``lesson05.solution_absmax_int8``, say)."""
    if not callable(solution):
        raise TypeError(f"show_solution takes a solution function, got {type(solution).__name__}")
    print(inspect.getsource(solution))
