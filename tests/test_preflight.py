"""qlora_lessons.preflight: `python -m qlora_lessons --check` passes here, and a broken part fails with what to do."""

import os
import subprocess
import sys
import time

import pytest

from qlora_lessons import cli, preflight


def test_the_check_passes_here_in_a_fresh_process_with_one_final_line():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "qlora_lessons", "--check"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)
    seconds = time.perf_counter() - start
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[-1] == "PASS", result.stdout + result.stderr
    assert [line.split()[0] for line in lines[:-1]] == ["ok"] * len(preflight.CHECKS)
    assert "kernels-community" not in result.stderr  # bitsandbytes' optional-kernel warning is kept quiet
    print(f"--check took {seconds:.1f} s")


def test_a_broken_bitsandbytes_fails_with_what_to_do(monkeypatch, capsys):
    import bitsandbytes.functional

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    monkeypatch.setattr(preflight, "CHECKS", [c for c in preflight.CHECKS if c[0] == "bitsandbytes"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--check"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert exit_.value.code == 1
    assert last.startswith("FAIL: bitsandbytes: RuntimeError: no kernel for this CPU — ") and "pip install" in last


def test_a_missing_widgets_extension_names_the_package(monkeypatch, tmp_path):
    import jupyter_core.paths

    monkeypatch.setattr(jupyter_core.paths, "jupyter_path", lambda *parts: [str(tmp_path)])
    monkeypatch.setattr(preflight, "CHECKS", [c for c in preflight.CHECKS if c[0] == "jupyterlab"])
    results = list(preflight.run_checks())
    assert [(r.name, r.ok) for r in results] == [("jupyterlab", False)]
    assert "jupyterlab_widgets" in preflight.verdict(results)


def test_the_verdict_names_the_first_failure_and_counts_the_rest():
    ok = preflight.CheckResult("install", True, "torch", "", 0.1)
    bad = [preflight.CheckResult(n, False, f"{n} broke", f"fix {n}", 0.1) for n in ("course model", "jupyterlab")]
    assert preflight.verdict([ok]) == "PASS"
    assert preflight.verdict([ok, *bad]) == (
        "FAIL: course model: course model broke — fix course model (1 more failed above)")


def test_without_check_the_default_is_still_the_environment_report(capsys):
    cli.main([])
    assert "torch" in capsys.readouterr().out
