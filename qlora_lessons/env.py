"""Which mode the course runs in, on which device, and a report of the environment.

The course has two modes over one set of notebooks:

- ``"cpu"``: the default on a machine without CUDA. Offline, on the bundled course model.
- ``"gpu"``: picked when CUDA is available. Cells that need CUDA (measured memory, paged memory)
  run only here; a parameters cell can point the lessons at a Hugging Face model id.

The environment variable ``QLORA_LESSONS_MODE=cpu|gpu`` forces a mode. Importing this module
probes nothing; the functions do, each time they are called.

Left out: multi-GPU setups (the course uses one device) and Apple's MPS backend (bitsandbytes
4-bit kernels are CUDA or CPU).
"""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

import torch

MODES = ("cpu", "gpu")
MODE_VARIABLE = "QLORA_LESSONS_MODE"
_REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "numpy", "matplotlib", "ipywidgets")


def course_mode() -> str:
    """The course mode: ``"gpu"`` if CUDA is available, else ``"cpu"``; ``QLORA_LESSONS_MODE`` overrides.

    Example: with ``QLORA_LESSONS_MODE=cpu`` set, ``course_mode() -> "cpu"`` even on a GPU machine.
    """
    raw = os.environ.get(MODE_VARIABLE)
    if raw is None or raw.strip() == "":
        return "gpu" if torch.cuda.is_available() else "cpu"
    mode = raw.strip().lower()
    if mode not in MODES:
        raise ValueError(
            f"{MODE_VARIABLE}={raw!r} is not a course mode; allowed values are 'cpu' and 'gpu' "
            f"(or leave it unset to pick 'gpu' when CUDA is available)"
        )
    if mode == "gpu" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{MODE_VARIABLE}=gpu but torch sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda}); install a CUDA build of torch (see README.md) "
            f"or set {MODE_VARIABLE}=cpu"
        )
    return mode


def device() -> torch.device:
    """The device the lessons compute on: ``cuda`` in GPU mode, ``cpu`` in CPU mode."""
    return torch.device("cuda") if course_mode() == "gpu" else torch.device("cpu")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


@dataclass(frozen=True)
class EnvironmentReport:
    """What an instructor checks first in a room of laptops: versions, device, mode."""

    python: str
    platform: str
    packages: tuple[tuple[str, str], ...]
    cuda_device: str | None
    cuda_memory_bytes: int | None
    cpu_threads: int
    mode: str

    def __str__(self) -> str:
        rows = [("python", self.python), ("platform", self.platform)]
        rows += list(self.packages)
        if self.cuda_device is None:
            rows.append(("cuda", "not available"))
        else:
            rows.append(("cuda", f"{self.cuda_device}, {_gib(self.cuda_memory_bytes or 0)}"))
        rows.append(("cpu threads", str(self.cpu_threads)))
        rows.append(("course mode", self.mode))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows the table, not the dataclass fields
        printer.text(str(self))


def describe_environment() -> EnvironmentReport:
    """Versions of python and the course's libraries, the CUDA device and its memory, the mode.

    Example: ``print(describe_environment())`` -> a two-column table ending in ``course mode  cpu``.
    """
    cuda_device, cuda_memory = None, None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        cuda_device, cuda_memory = properties.name, int(properties.total_memory)
    return EnvironmentReport(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        packages=tuple((name, _version(name)) for name in _REPORTED_PACKAGES),
        cuda_device=cuda_device,
        cuda_memory_bytes=cuda_memory,
        cpu_threads=torch.get_num_threads(),
        mode=course_mode(),
    )


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (CPU and CUDA) with one integer."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch on ``n`` threads, then set the previous number back (also after an error).

    Example: ``with torch_threads(1): model(ids)`` runs the forward pass on one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup_lesson(seed: int = 0) -> str:
    """The setup cell of every lesson: seed everything, small figures, quiet library warnings.

    Returns the course mode and prints one line saying which it is and on what device.
    Example: ``MODE = setup_lesson(seed=0)`` prints ``course mode: cpu (device cpu, seed 0)``.
    """
    seed_everything(seed)
    mode = course_mode()
    import matplotlib

    matplotlib.rcParams.update({"figure.figsize": (6.4, 3.2), "figure.dpi": 72, "savefig.dpi": 72})
    # Library warnings print file paths of the machine they ran on; a lesson states its own caveats.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes logs a line on CPU machines about an optional kernels package; the lessons say what runs where.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; this keeps setup usable if it is broken
        pass
    print(f"course mode: {mode} (device {device()}, seed {seed})")
    return mode


def main() -> None:
    """``python -m qlora_lessons``: print the environment report."""
    try:
        print(describe_environment())
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
