"""The package is typed (``py.typed``): mypy passes on it, and a researcher's code that calls the public API with
the wrong types is caught by mypy (configuration: pyproject.toml, ``[tool.mypy]``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RIGHT = '''
import torch
from qlora_lessons import MemoryBreakdown, dequantize_4bit, estimate_training_memory, load_model, quantize_4bit

model = load_model(tokenizer=False)
same_model, tokenizer = load_model("course-model")
packed, state = quantize_4bit(torch.randn(64, 64), blocksize=64)
restored: torch.Tensor = dequantize_4bit(packed, state)
breakdown: MemoryBreakdown = estimate_training_memory("llama-7b", method="qlora")
peak_gb: float = breakdown.total / 1e9
'''

WRONG = '''
import torch
from qlora_lessons import dequantize_4bit, load_model, quantize_4bit

pair: int = load_model()  # line 5: a (model, tokenizer) pair, not an int
packed, state = quantize_4bit(torch.randn(64, 64), blocksize="64")  # line 6: blocksize is an int
restored: str = dequantize_4bit(packed, state)  # line 7: a tensor, not a str
'''


def _mypy(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MYPYPATH": str(ROOT)}  # the checkout, as an editable install is not followed
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=600)


def test_mypy_passes_on_the_package_and_catches_wrong_calls(tmp_path):
    """One mypy run (a cold cache takes about 15 s of CPU): the package and a correct caller pass, and each wrong
    call of the other caller is an error."""
    assert (ROOT / "qlora_lessons" / "py.typed").exists()
    (tmp_path / "right.py").write_text(RIGHT)
    (tmp_path / "wrong.py").write_text(WRONG)
    result = _mypy("qlora_lessons", str(tmp_path / "right.py"), str(tmp_path / "wrong.py"))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # by file name: mypy's cache may give the path of an earlier run's identical wrong.py
    assert all(Path(line.split(":")[0]).name == "wrong.py" for line in errors), "\n".join(errors)
    assert sorted({int(line.split(":")[1]) for line in errors}) == [5, 6, 7], result.stdout[-4000:]
