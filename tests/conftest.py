"""Fixtures shared by the library tests."""

import os

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


BROWSER_WORDS = ("chromium", "playwright")


def _fail_a_skipped_browser_test(report) -> None:
    """With ``QLORA_LESSONS_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs Chromium), a browser test that
    would be skipped for want of Chromium or Playwright fails instead: CI must run them, not skip them."""
    if report.skipped and os.environ.get("QLORA_LESSONS_REQUIRE_BROWSER") == "1":
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr).lower()
        if any(word in reason for word in BROWSER_WORDS):
            report.outcome = "failed"
            report.longrepr = f"QLORA_LESSONS_REQUIRE_BROWSER=1 but the browser test was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skipped_browser_test(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # a module skipped as a whole (pytest.skip(allow_module_level=True))
    outcome = yield
    _fail_a_skipped_browser_test(outcome.get_result())
