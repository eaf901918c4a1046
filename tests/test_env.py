"""qlora_lessons.env: the mode switch, the device and the environment report."""

import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from qlora_lessons import env


def test_mode_follows_cuda_when_unset(monkeypatch):
    monkeypatch.delenv(env.MODE_VARIABLE, raising=False)
    assert env.course_mode() == ("gpu" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_mode_forced_to_cpu(monkeypatch, value):
    monkeypatch.setenv(env.MODE_VARIABLE, value)
    assert env.course_mode() == "cpu"
    assert env.device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["tpu", "cuda", "1"])
def test_bad_mode_names_the_allowed_values(monkeypatch, value):
    monkeypatch.setenv(env.MODE_VARIABLE, value)
    with pytest.raises(ValueError, match="QLORA_LESSONS_MODE.*'cpu' and 'gpu'"):
        env.course_mode()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_mode_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(env.MODE_VARIABLE, "gpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        env.course_mode()


def test_report_lists_versions_and_mode(monkeypatch):
    monkeypatch.setenv(env.MODE_VARIABLE, "cpu")
    report = env.describe_environment()
    versions = dict(report.packages)
    assert list(versions)[:4] == ["torch", "transformers", "peft", "bitsandbytes"]
    assert versions["torch"] == metadata.version("torch")
    assert versions["peft"] == metadata.version("peft")
    assert report.mode == "cpu"
    lines = str(report).splitlines()
    assert lines[0].split() == ["python", platform.python_version()]
    assert lines[-1].split() == ["course", "mode", "cpu"]


def test_command_prints_the_report():
    result = subprocess.run([sys.executable, "-m", "qlora_lessons"], capture_output=True, text=True,
                            env={**os.environ, env.MODE_VARIABLE: "cpu"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "transformers" in result.stdout and "bitsandbytes" in result.stdout
    assert result.stdout.strip().splitlines()[-1].split() == ["course", "mode", "cpu"]


def test_command_with_bad_mode_exits_with_the_error():
    result = subprocess.run([sys.executable, "-m", "qlora_lessons"], capture_output=True, text=True,
                            env={**os.environ, env.MODE_VARIABLE: "tpu"}, timeout=120)
    assert result.returncode == 2
    assert "allowed values are 'cpu' and 'gpu'" in result.stderr


def test_seed_everything_repeats_draws():
    env.seed_everything(3)
    a = torch.rand(4)
    env.seed_everything(3)
    assert torch.equal(a, torch.rand(4))
    with pytest.raises(ValueError, match="seed"):
        env.seed_everything(-1)


def test_setup_lesson_seeds_and_quiets_library_logs(monkeypatch, capsys):
    import logging
    import warnings

    import matplotlib

    monkeypatch.setenv("QLORA_LESSONS_MODE", "cpu")
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))  # setup_lesson's filters end with the test
    logger = logging.getLogger("bitsandbytes")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    with matplotlib.rc_context():
        assert env.setup_lesson(seed=3) == "cpu"
        first = torch.rand(3)
        env.setup_lesson(seed=3)
    assert capsys.readouterr().out == "course mode: cpu (device cpu, seed 3)\n" * 2
    assert torch.equal(torch.rand(3), first)
    assert logger.getEffectiveLevel() == logging.ERROR


def test_torch_threads_sets_the_count_for_the_block_and_back_after_an_error():
    before = torch.get_num_threads()
    with env.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), env.torch_threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value, dtype", [("bfloat16", torch.bfloat16), ("float32", torch.float32),
                                          (" Float32 ", torch.float32)])
def test_compute_dtype_can_be_forced(monkeypatch, value, dtype):
    monkeypatch.setenv(env.COMPUTE_DTYPE_VARIABLE, value)
    choice = env.compute_choice()
    assert choice.dtype == env.compute_dtype() == dtype
    assert env.COMPUTE_DTYPE_VARIABLE in choice.reason


def test_bad_compute_dtype_names_the_allowed_values(monkeypatch):
    monkeypatch.setenv(env.COMPUTE_DTYPE_VARIABLE, "float16")
    with pytest.raises(ValueError, match="QLORA_LESSONS_COMPUTE_DTYPE.*'bfloat16', 'float32'"):
        env.compute_choice()


def test_cpu_compute_dtype_follows_the_measured_ratio(monkeypatch):
    monkeypatch.setenv(env.MODE_VARIABLE, "cpu")
    monkeypatch.delenv(env.COMPUTE_DTYPE_VARIABLE, raising=False)
    for ratio, dtype in ((1.1, torch.bfloat16), (env.SLOW_BFLOAT16_RATIO, torch.bfloat16), (13.0, torch.float32)):
        monkeypatch.setattr(env, "_CPU_PROBE", [ratio])
        choice = env.compute_choice()
        assert choice.dtype == dtype, (ratio, choice)
        assert "float32" in choice.reason
    assert "no native bfloat16" in str(env.compute_choice())


def test_bfloat16_probe_measures_a_positive_ratio():
    ratio = env.bfloat16_matmul_ratio(size=64, repeats=3)
    assert 0 < ratio < 1000
    with pytest.raises(ValueError, match="size"):
        env.bfloat16_matmul_ratio(size=8)


def test_report_names_the_compute_dtype_and_cpu_kernels(monkeypatch):
    monkeypatch.setenv(env.MODE_VARIABLE, "cpu")
    monkeypatch.setenv(env.COMPUTE_DTYPE_VARIABLE, "float32")
    text = str(env.describe_environment())
    assert "compute dtype  float32 (set by QLORA_LESSONS_COMPUTE_DTYPE)" in text
    assert f"cpu kernels    {torch.backends.cpu.get_cpu_capability()}" in text


def test_seed_variable_replaces_the_lesson_seed(monkeypatch, capsys):
    monkeypatch.setenv(env.SEED_VARIABLE, "7")
    env.setup_lesson(seed=0)
    assert env.lesson_seed() == 7 and "seed 7)" in capsys.readouterr().out
    monkeypatch.setenv(env.SEED_VARIABLE, "-1")
    with pytest.raises(ValueError, match="QLORA_LESSONS_SEED"):
        env.setup_lesson(seed=0)
