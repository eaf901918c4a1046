"""qlora_lessons.exercises.lesson06: every check passes its solution and fails wrong answers."""

import pytest
import torch

from qlora_lessons.double_quant import bits_per_param, estimate_constants_memory
from qlora_lessons.exercises import lesson06, show_solution


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (lesson06.check_bits_at_blocksize_128, lesson06.solution_bits_at_blocksize_128(), 4 + 32 / 128),
        (lesson06.check_gb_saved_65b, lesson06.solution_gb_saved_65b(), 65 * 0.373 / 8 * 8),  # forgot the byte
        (lesson06.check_saving_fraction, lesson06.solution_saving_fraction(), 0.15),  # the seed's 10-20%
        (lesson06.check_saving_fraction, lesson06.solution_saving_fraction(), 0.373 / 16),  # of a 16-bit model
        (lesson06.check_centre, lesson06.solution_centre, lambda a: (a - a.median(), float(a.median()))),
        (lesson06.check_rebuild_constants, lesson06.solution_rebuild_constants,
         lambda codes, offset, absmax2, code8, b: code8[codes.long()] * absmax2[0] + offset),  # one absmax2 for all
        (lesson06.check_dq_stops_paying, lesson06.solution_dq_stops_paying(), 64),
    ],
)
def test_check_passes_the_solution_and_fails_a_wrong_answer(check, solution, wrong, grades):
    grades(check, solution, wrong)


def test_the_known_answers_agree_with_the_library():
    assert lesson06.solution_bits_at_blocksize_128() == bits_per_param(128, double_quant=True)
    n = 65 * 10**9
    saved = estimate_constants_memory(n).total_bytes - estimate_constants_memory(n, double_quant=True).total_bytes
    assert abs(lesson06.solution_gb_saved_65b() - saved / 1e9) < 1e-3
    assert 0.08 < lesson06.solution_saving_fraction() < 0.09


def test_a_failing_function_or_a_bool_is_reported_not_raised(capsys):
    assert lesson06.check_centre(lambda a: 1 / 0) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert lesson06.check_rebuild_constants(torch.zeros(3)) is False
    assert "no brackets" in capsys.readouterr().out
    assert lesson06.check_saving_fraction(True) is False


def test_solutions_can_be_shown(capsys):
    show_solution(lesson06.solution_rebuild_constants)
    assert "blocksize2" in capsys.readouterr().out


def test_double_quantization_stops_saving_5_percent_at_blocksize_128():
    assert lesson06.solution_dq_stops_paying() == 128
