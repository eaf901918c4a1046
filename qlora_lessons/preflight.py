"""The pre-flight check a learner runs before a workshop: ``python -m qlora_lessons --check``.

It runs, in this order and on the CPU, what the lessons need and what goes wrong on a laptop:

1. the install: torch, transformers, peft and bitsandbytes import;
2. the course model: the bundled model and its tokenizer load from the package and generate, offline;
3. bitsandbytes on this CPU: a 4-bit (NF4) quantize and dequantize round trip, and a forward and a backward
   pass through a ``bitsandbytes.nn.Linear4bit`` layer (what lessons 05-08 use; QLoRA, Dettmers et al. 2023,
   section 3);
4. JupyterLab and ipywidgets import, and the widgets extension of JupyterLab is installed.

Each check prints one line (``ok``/``FAIL``, what it found, its seconds); the last line is ``PASS`` or
``FAIL: <what> — <what to do>``, and the exit status is 0 or 1. It takes 10 to 20 seconds, mostly imports.

Example::

    $ python -m qlora_lessons --check
    ok    install: torch 2.13.0+cpu, transformers 5.x, peft 0.x, bitsandbytes 0.x (3.1 s)
    ...
    PASS
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from qlora_lessons.course_extra import course_import

INSTALL = "reinstall the course: `make course` in the course folder (or `pip install -c constraints.txt " \
          "torch==2.13.0 -e '.[course]'`)"
COURSE_EXTRA = "install the course's notebook tools: `pip install -c constraints.txt -e '.[course]'` (or `make course`)"


class Problem(Exception):
    """A failed check that knows better than its default what the learner should do."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its name, whether it passed, what it found (or the error), what to do, seconds."""

    name: str
    ok: bool
    detail: str
    fix: str
    seconds: float


def check_install() -> str:
    """Import the four libraries of the course; return their versions."""
    # bitsandbytes warns at import, on CPUs with AVX512-BF16, that an optional faster kernel package is absent:
    # not a problem for the course, and not a line to worry a learner with before PASS
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes
    import peft
    import transformers

    return (f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"bitsandbytes {bitsandbytes.__version__}")


def check_course_model() -> str:
    """Load the bundled course model on the CPU with the hub offline and generate a few tokens greedily."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from qlora_lessons.models import count_model_parameters, load_model

    model, tokenizer = load_model(device="cpu")
    inputs = tokenizer(["The capital of"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out.shape[1] - inputs["input_ids"].shape[1]
    if new < 1:
        raise RuntimeError("the course model generated no token")
    return f"{count_model_parameters(model):,} parameters, generated {new} tokens offline"


def check_bitsandbytes() -> str:
    """NF4 round trip (blocks of 64) and a Linear4bit forward and backward on the CPU."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    from qlora_lessons.nf4 import nf4_code

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=generator)
    packed, state = quantize_4bit(x, blocksize=64, quant_type="nf4")
    back = dequantize_4bit(packed, state)
    if packed.numel() != x.numel() // 2 or back.shape != x.shape:
        raise RuntimeError(f"4-bit codes of shape {tuple(packed.shape)} for {x.numel()} numbers")
    absmax = x.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    # the nearest NF4 level is at most half the code's widest gap away (-1 to -0.6962: 0.152 x absmax)
    bound = nf4_code().diff().max().item() / 2 + 1e-6
    error = ((back - x).reshape(-1, 64).abs() / absmax).max().item()
    if not error <= bound:
        raise RuntimeError(f"dequantized values are off by {error:.3f} x absmax (NF4 allows {bound:.3f})")
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(x[:32].contiguous(), requires_grad=False, quant_type="nf4", blocksize=64)
    layer = layer.to("cpu")
    inputs = torch.randn(4, 64, generator=generator, requires_grad=True)
    layer(inputs).square().sum().backward()
    if inputs.grad is None or not torch.isfinite(inputs.grad).all():
        raise RuntimeError("Linear4bit's backward pass gave no finite gradient")
    return f"NF4 round trip within {error:.3f} x absmax, Linear4bit forward and backward on the CPU"


def check_notebook_tools() -> str:
    """JupyterLab and ipywidgets import, and the widgets' JupyterLab extension is installed."""
    from pathlib import Path

    try:
        ipywidgets, jupyterlab = course_import("ipywidgets"), course_import("jupyterlab")
        from jupyter_core.paths import jupyter_path
    except ImportError as error:
        raise Problem(f"{error.name or 'a notebook package'} is not installed", COURSE_EXTRA) from error
    manager = Path("@jupyter-widgets") / "jupyterlab-manager" / "package.json"
    if not any((Path(folder) / manager).exists() for folder in jupyter_path("labextensions")):
        raise Problem("JupyterLab's widgets extension (@jupyter-widgets/jupyterlab-manager) is not installed: "
                      "sliders would show as text", "`pip install -c constraints.txt jupyterlab_widgets`")
    return f"jupyterlab {jupyterlab.__version__}, ipywidgets {ipywidgets.__version__}, widgets extension"


CHECKS: tuple[tuple[str, Callable[[], str], str], ...] = (
    ("install", check_install, INSTALL),
    ("course model", check_course_model, "the bundled model did not load or generate: " + INSTALL),
    ("bitsandbytes", check_bitsandbytes, "bitsandbytes does not work on this CPU: `pip install -c constraints.txt "
     "bitsandbytes`, then show the instructor the output of `python -m qlora_lessons env`"),
    ("jupyterlab", check_notebook_tools, COURSE_EXTRA),
)


def run_checks() -> Iterator[CheckResult]:
    """Run every check in ``CHECKS``, yielding each result as it comes; an exception is a failed check."""
    for name, check, fix in CHECKS:
        start = time.perf_counter()
        try:
            detail, ok = check(), True
        except Exception as error:  # any failure of a learner's install is reported, not raised
            detail, ok = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", False
            fix = error.fix if isinstance(error, Problem) else fix
        yield CheckResult(name, ok, detail, fix, round(time.perf_counter() - start, 1))


def verdict(results: list[CheckResult]) -> str:
    """``PASS``, or ``FAIL: <first failed check> — <what to do>`` (and how many more failed)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return "PASS"
    more = f" ({len(failed) - 1} more failed above)" if len(failed) > 1 else ""
    return f"FAIL: {failed[0].name}: {failed[0].detail} — {failed[0].fix}{more}"


def main() -> int:
    """Print one line per check and the verdict; return the exit status (0 pass, 1 fail)."""
    results = []
    for result in run_checks():
        print(f"{'ok' if result.ok else 'FAIL':5s} {result.name}: {result.detail} ({result.seconds} s)", flush=True)
        results.append(result)
    line = verdict(results)
    print(line)
    return 0 if line == "PASS" else 1
