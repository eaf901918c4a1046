"""Each lesson 07 self-check passes its worked solution and fails a typical wrong answer."""

from __future__ import annotations

import pytest

from qlora_lessons.exercises import lesson07


@pytest.mark.parametrize(
    ("check", "solution", "wrong"),
    [
        # Wrong answers: one moment only (or 2-byte moments); a string; every adapter tensor counted as paged, or
        # none; the evictable bytes of all the adapters' state (0.32 GB) or in one layer; r=24 (98,304 < 1e5).
        (lesson07.check_adamw_state_bytes, lesson07.solution_adamw_state_bytes, 28_000_000_000),
        (lesson07.check_adamw_state_bytes, lesson07.solution_adamw_state_bytes, "56 GB"),
        (lesson07.check_paged_tensors_7b, lesson07.solution_paged_tensors_7b, 14),
        (lesson07.check_paged_tensors_7b, lesson07.solution_paged_tensors_7b, 0),
        (lesson07.check_evictable_bytes_7b, lesson07.solution_evictable_bytes_7b, 8 * 39_976_960),
        (lesson07.check_evictable_bytes_7b, lesson07.solution_evictable_bytes_7b, 135_266_304 // 32),
        (lesson07.check_rank_all_paged, lesson07.solution_rank_all_paged, 24),
        (lesson07.check_rank_all_paged, lesson07.solution_rank_all_paged, 32),
        # 8-bit state: the tables and absmax forgotten (8n - 2n); the signed map counted whole; half of it.
        (lesson07.check_8bit_saving_7b, lesson07.solution_8bit_saving_7b, 6 * 7_000_000_000),
        (lesson07.check_levels_for_v, lesson07.solution_levels_for_v, 256),
        (lesson07.check_levels_for_v, lesson07.solution_levels_for_v, 128),
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


def test_the_dequantize_check_passes_its_solution_and_fails_wrong_functions(capsys):
    assert lesson07.check_dequantize_moment(lesson07.solution_dequantize_moment) is True
    # One absmax per element instead of per block (fails on shapes, or raises).
    assert lesson07.check_dequantize_moment(lambda codes, absmax, code, b: code[codes.long()] * absmax[0]) is False
    # The codes themselves, not the levels they index.
    assert lesson07.check_dequantize_moment(
        lambda codes, absmax, code, b: codes.float() / 255 * absmax.repeat_interleave(b)[: codes.numel()]) is False
    assert lesson07.check_dequantize_moment(lambda codes, absmax, code, b: None) is False
    assert lesson07.check_dequantize_moment("not a function") is False
    assert "pass your function itself" in capsys.readouterr().out
