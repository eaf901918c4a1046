"""Lesson 00's self-checks accept their solutions and reject wrong answers; predictions are reported, not graded."""

from qlora_lessons.exercises import lesson00


def test_float32_bytes():
    assert lesson00.check_float32_bytes(lesson00.solution_float32_bytes())
    assert lesson00.solution_float32_bytes() == 4
    assert not lesson00.check_float32_bytes(32) and not lesson00.check_float32_bytes(...)


def test_course_model_bytes_grades_the_measurement_and_reports_the_prediction(capsys):
    measured = lesson00.solution_course_model_bytes()
    assert measured == 4 * 2_805_760  # float32 weights of the 2,805,760 parameters (tied embeddings once)
    assert lesson00.check_course_model_bytes(measured, prediction=measured // 2)
    assert "50% below the measured 11,223,040" in capsys.readouterr().out
    assert not lesson00.check_course_model_bytes(2_805_760, prediction=2_805_760)  # parameters, not bytes
    assert "your prediction" not in capsys.readouterr().out  # nothing said about a prediction when wrong


def test_full_finetune_bytes():
    assert lesson00.solution_full_finetune_bytes() == 8 * 7_000_000_000
    assert lesson00.check_full_finetune_bytes(56e9, prediction=112e9)
    assert not lesson00.check_full_finetune_bytes(112e9)  # float32: the 16 bytes per parameter of lesson 02
    assert not lesson00.check_full_finetune_bytes(14e9)  # the weights alone
    assert not lesson00.check_full_finetune_bytes(...)


def test_graded_survives_a_zero_expected_value(capsys):
    assert lesson00.graded("zero", 0, 0, 1, "hint")
    assert "above" in capsys.readouterr().out
