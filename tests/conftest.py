"""Fixtures shared by the library tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The models in these tests are tiny: one thread is faster than two, and much faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def grades(capsys):
    """``grades(check, solution, wrong)``: an exercise check passes the solution with a tick, fails the wrong answer
    with a cross, and returns True and False."""

    def grades(check, solution, wrong) -> None:
        assert check(solution) is True
        assert "✓" in capsys.readouterr().out
        assert check(wrong) is False
        assert "✗" in capsys.readouterr().out

    return grades
