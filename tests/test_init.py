"""The package's top level re-exports every public name it lists, and importing it prints nothing."""

import subprocess
import sys

import qlora_lessons


def test_every_listed_name_is_exported_once():
    assert len(qlora_lessons.__all__) == len(set(qlora_lessons.__all__))
    missing = [name for name in qlora_lessons.__all__ if not hasattr(qlora_lessons, name)]
    assert not missing


def test_import_is_silent():
    result = subprocess.run([sys.executable, "-c", "import qlora_lessons"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr[-2000:]
