"""Maintainer tool: rewrite constraints.txt, the exact versions the course was last tested with.

    python tools/constraints.py                 # from .venv (Python 3.11); checks each pin exists for 3.12

`make course`, `make test` and `.ci/run` install with `-c constraints.txt`, so a new release of transformers
(or of anything below it) cannot change a workshop the night before. To move to newer releases: upgrade the
virtual environment (`.venv/bin/pip install -U -e ".[dev]"`), run `make test`, then this tool, and commit
constraints.txt with the test results. The scheduled workflow `.github/workflows/newest.yml` tests the newest
releases every week, so drift shows up before a learner meets it.

The versions come from `pip freeze` of the tested environment. The pins apply to Python 3.11 and 3.12 (the tool
checks with pip that every pinned release has a 3.12 build); on Python 3.10 they do not apply, because the
tested transformers, numpy and others need 3.11: there pip installs the newest releases that support 3.10,
within pyproject.toml's floors.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# The exact versions qlora-lessons was last tested with (Linux x86_64, Python 3.11; also applied on 3.12).
# make course / make test / .ci/run install with `pip install -c constraints.txt`; pyproject.toml keeps the floors.
# Python 3.10: no pins (the tested transformers and numpy need 3.11); pip picks the newest releases for 3.10.
# Refresh: upgrade .venv, run `make test`, then `python tools/constraints.py` (see its docstring).
"""
MARKER = 'python_version >= "3.11"'


def canonical(name: str) -> str:
    """PEP 503 name: huggingface_hub, Huggingface.Hub -> huggingface-hub."""
    return re.sub(r"[-_.]+", "-", name).lower()


def frozen(python: Path) -> dict[str, str]:
    """name -> version of everything installed in the environment, the course itself left out."""
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith(("-e", "#")):
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.split("+")[0]  # torch==2.13.0+cpu -> 2.13.0: CPU and CUDA builds share it
    pins.pop("qlora-lessons", None)
    pins.pop("pip", None)  # make upgrades pip itself first
    return pins


def check_exists(python: Path, version: str, pins: dict[str, str]) -> None:
    """Fail unless every pinned release (torch aside: it has its own install step) has a build for ``version``."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "r.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n != "torch"))
        result = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                                 "--quiet", "--python-version", version, "--only-binary", ":all:",
                                 "-r", str(requirements)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"some pinned release has no build for Python {version}:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", type=Path, default=ROOT / ".venv" / "bin" / "python",
                        help="the tested environment's interpreter (default: .venv/bin/python)")
    parser.add_argument("--output", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args()
    pins = frozen(args.python)
    print("checking that every pin has a Python 3.12 build ...", flush=True)
    check_exists(args.python, "3.12", pins)
    lines = [f"{name}=={version} ; {MARKER}" for name, version in sorted(pins.items())]
    args.output.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {args.output.name}: {len(lines)} pins")


if __name__ == "__main__":
    sys.exit(main())
