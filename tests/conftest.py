"""Fixtures shared by the library tests."""

import pytest

from qlora_lessons.env import torch_threads


@pytest.fixture(scope="module")
def one_thread():
    """The models in these tests are tiny: one thread is faster than two, and much faster on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture
def grades(capsys):
    """``grades(check, solution, wrong)``: an exercise check returns True and prints a tick for the solution, and
    returns False and prints a cross for the wrong answer."""

    def grades(check, solution, wrong) -> None:
        assert check(solution) is True
        assert "✓" in capsys.readouterr().out
        assert check(wrong) is False
        assert "✗" in capsys.readouterr().out

    return grades
