"""qlora_lessons.exercises.lesson05: every check passes its solution and fails wrong answers."""

import pytest
import torch

from qlora_lessons.exercises import lesson05, show_solution
from qlora_lessons.nf4 import fp4_code, nf4_code


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (lesson05.check_absmax_int8, lesson05.solution_absmax_int8,
         lambda x: torch.round(x * 127 / x.max()).to(torch.int8)),  # max, not max |x|
        (lesson05.check_absmax_int8, lesson05.solution_absmax_int8,
         lambda x: (x * 127 / x.abs().max()).to(torch.int8)),  # truncates instead of rounding
        (lesson05.check_nearest_level, lesson05.solution_nearest_level,
         lambda x, levels: (x[:, None] - levels[None, :]).abs().argmin(dim=1) + 1),
        (lesson05.check_nearest_level, lesson05.solution_nearest_level,
         lambda x, levels: (x[:, None] >= (levels[:-1] + levels[1:])[None, :] / 2).sum(dim=1)),  # ties go up
        (lesson05.check_pack_pair, lesson05.solution_pack_pair, lambda high, low: (low << 4) | high),
        (lesson05.check_n_constants, lesson05.solution_n_constants(), 4096 * 4096 // 32),
        (lesson05.check_seed_example_level, lesson05.solution_seed_example_level(), -0.75),
        (lesson05.check_fp4_decode, lesson05.solution_fp4_decode,
         lambda bits: (-1.0 if bits & 8 else 1.0) * (0.5 * (bits & 1) if (bits >> 1) & 3 == 0  # textbook E2M1
                                                     else 2.0 ** (((bits >> 1) & 3) - 1) * (1 + (bits & 1) / 2)) / 6),
        (lesson05.check_fp4_decode, lesson05.solution_fp4_decode, lambda bits: abs(lesson05.solution_fp4_decode(bits))),
        (lesson05.check_reduction_vs_bfloat16, lesson05.solution_reduction_vs_bfloat16(), 0.875),  # codes vs fp32
        (lesson05.check_reduction_vs_bfloat16, lesson05.solution_reduction_vs_bfloat16(), 0.75),  # constants left out
        (lesson05.check_best_offset, lesson05.solution_best_offset(), 0.9677083),  # NF4's own offset is not the best
    ],
)
def test_check_passes_the_solution_and_fails_a_wrong_answer(check, solution, wrong, grades):
    grades(check, solution, wrong)


def test_the_known_answers():
    assert lesson05.solution_n_constants() == 262_144
    assert lesson05.solution_seed_example_level() == float(nf4_code()[1])
    assert int(lesson05.solution_pack_pair(torch.tensor(1), torch.tensor(2))) == 0x12
    assert torch.equal(torch.tensor([lesson05.solution_fp4_decode(b) for b in range(16)]), fp4_code())
    assert lesson05.solution_reduction_vs_bfloat16() == 1 - 4.5 / 16


def test_a_failing_or_misshapen_function_is_reported_not_raised(capsys):
    assert lesson05.check_absmax_int8(lambda x: 1 / 0) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert lesson05.check_absmax_int8(lambda x: x[:1]) is False
    assert "shape" in capsys.readouterr().out
    assert lesson05.check_pack_pair(18) is False
    assert "no brackets" in capsys.readouterr().out
    assert lesson05.check_fp4_decode(lambda bits: [][bits]) is False
    assert "raised IndexError" in capsys.readouterr().out
    assert lesson05.check_fp4_decode(0.5) is False
    assert "no brackets" in capsys.readouterr().out


def test_solutions_can_be_shown(capsys):
    show_solution(lesson05.solution_nearest_level)
    assert "midpoints" in capsys.readouterr().out
