"""The offline install of a workshop: `make course` installs from wheelhouse/ with the network cut, and the course runs.

Heavy (the wheelhouse is a few hundred MB, the test builds a fresh virtual environment from it and executes a
lesson), so it is skipped unless asked for:

    make wheelhouse                                   # once, with the network (Linux x86_64 wheels by default)
    QLORA_LESSONS_TEST_WHEELHOUSE=1 python -m pytest tests/test_wheelhouse.py -s

It cuts the network with `unshare -n` (a new network namespace with only the loopback interface; needs root or
unprivileged user namespaces), ignores every pip configuration file and variable of the machine, runs the
install step of `make course` into a new environment, then `python -m qlora_lessons --check` and lesson 06 in it.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "wheelhouse"

pytestmark = pytest.mark.skipif(
    os.environ.get("QLORA_LESSONS_TEST_WHEELHOUSE") != "1",
    reason="heavy (a fresh environment from a few hundred MB of wheels): run `make wheelhouse`, then "
           "QLORA_LESSONS_TEST_WHEELHOUSE=1 python -m pytest tests/test_wheelhouse.py -s")


def _offline(command: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Run a shell command in a network namespace of its own: loopback only (kernels talk to it), no route out."""
    return subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && {command}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_fresh_environment_installs_from_the_wheelhouse_offline_and_the_course_runs(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("`unshare -n` is not available here (needs Linux with root or user namespaces)")
    if not list(WHEELHOUSE.glob("qlora_lessons-*.whl")):
        subprocess.run(["make", "wheelhouse"], cwd=ROOT, check=True, timeout=3600)
    size = sum(f.stat().st_size for f in WHEELHOUSE.iterdir())
    print(f"\nwheelhouse: {len(list(WHEELHOUSE.iterdir()))} files, {size / 2**20:.0f} MiB")

    # nothing of this machine's pip setup (extra indexes, find-links, constraints) may help the install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "JUPYTER", "PYTHONPATH"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", JUPYTER_DATA_DIR=str(tmp_path / "jd"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jc"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jr"),
               HOME=str(tmp_path), QLORA_LESSONS_MODE="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    venv = tmp_path / "venv"
    start = time.perf_counter()
    install = _offline(f"make VENV={venv} PYTHON={sys.executable} {venv}/.qlora-lessons-course", env, 1800)
    seconds = time.perf_counter() - start
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "--no-index --find-links wheelhouse" in install.stdout, "make course used the wheelhouse"
    print(f"offline install: {seconds:.0f} s")

    check = _offline(f"{venv}/bin/python -m qlora_lessons --check", env, 300)
    assert check.stdout.strip().splitlines()[-1:] == ["PASS"], check.stdout + check.stderr[-3000:]

    out = tmp_path / "executed"
    start = time.perf_counter()
    lesson = _offline(f"{venv}/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 "
                      f"--output-dir {out} notebooks/06_double_quantization.ipynb", env, 900)
    assert lesson.returncode == 0, lesson.stderr[-4000:]
    assert (out / "06_double_quantization.ipynb").exists()
    print(f"lesson 06 executed offline in the new environment: {time.perf_counter() - start:.0f} s")
