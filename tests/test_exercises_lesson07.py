"""Each lesson 07 self-check passes its worked solution and fails a typical wrong answer."""

from __future__ import annotations

import pytest

from qlora_lessons.exercises import lesson07


@pytest.mark.parametrize(
    ("check", "solution", "wrong"),
    [
        # Wrong answers: one moment only (or 2-byte moments); a string; the partial last page dropped; a page
        # count not rounded up; the saving without the page that stays on the device.
        (lesson07.check_adamw_state_bytes, lesson07.solution_adamw_state_bytes, 28_000_000_000),
        (lesson07.check_adamw_state_bytes, lesson07.solution_adamw_state_bytes, "56 GB"),
        (lesson07.check_pages_per_step, lesson07.solution_pages_per_step, 76),
        (lesson07.check_pages_per_step, lesson07.solution_pages_per_step, 10_000_000 / 131_072),
        (lesson07.check_peak_saving, lesson07.solution_peak_saving, 80_000_000),
    ],
)
def test_number_checks_pass_their_solution_and_fail_a_wrong_answer(check, solution, wrong, capsys):
    assert check(solution()) is True
    assert "✓" in capsys.readouterr().out
    assert check(wrong) is False
    assert "✗" in capsys.readouterr().out


def test_the_8bit_check_passes_its_solution_and_fails_wrong_functions(capsys):
    assert lesson07.check_adamw8bit_state_bytes(lesson07.solution_adamw8bit_state_bytes) is True
    # Forgets that small tensors stay 32-bit.
    assert lesson07.check_adamw8bit_state_bytes(lambda n: 2 * (n + 4 * -(-n // 256)) + 2048) is False
    # Forgets the absmax constants.
    assert lesson07.check_adamw8bit_state_bytes(lambda n: 8 * n if n < 4096 else 2 * n + 2048) is False
    assert lesson07.check_adamw8bit_state_bytes(lambda n: 1 / 0) is False
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert lesson07.check_adamw8bit_state_bytes(42) is False
