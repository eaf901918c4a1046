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

from qlora_lessons.course_extra import course_import

MODES = ("cpu", "gpu")
MODE_VARIABLE = "QLORA_LESSONS_MODE"
COMPUTE_DTYPE_VARIABLE = "QLORA_LESSONS_COMPUTE_DTYPE"
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# A CPU without native bfloat16 instructions (AVX512-BF16, AMX, Arm BF16) multiplies bfloat16 matrices
# through a slow fallback: 12-20x the time of float32 here with AVX2 kernels only (CONTRIBUTING.md, "Other
# machines"), 1.0-1.9x with native support.
SLOW_BFLOAT16_RATIO = 3.0
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


@dataclass(frozen=True)
class ComputeDtypeChoice:
    """The dtype the lessons compute in on this machine, and why (see ``compute_dtype``)."""

    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"


_CPU_PROBE: list[float] = []  # the measured bfloat16 / float32 time ratio, once per process


def bfloat16_matmul_ratio(size: int = 256, repeats: int = 5) -> float:
    """Time of a bfloat16 matrix multiply over that of the same float32 one, on this CPU (median of ``repeats``).

    About 1 where the CPU has native bfloat16 instructions; 10 or more where torch falls back to a slow path.
    Example: ``bfloat16_matmul_ratio()`` -> 1.1 on a CPU with AVX512-BF16, 13 on an AVX2 laptop.
    """
    import time

    if size < 16 or repeats < 1:
        raise ValueError(f"size must be >= 16 and repeats >= 1, got size={size}, repeats={repeats}")
    generator = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(4 * size, size, generator=generator), torch.randn(size, 2 * size, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
        a @ b  # warm-up: first calls pick kernels and allocate
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    return seconds(a16, b16) / max(seconds(a32, b32), 1e-9)


def compute_choice() -> ComputeDtypeChoice:
    """Which dtype the lessons multiply in: bfloat16 where it is fast, float32 where it is not.

    - ``QLORA_LESSONS_COMPUTE_DTYPE=bfloat16|float32`` forces the choice;
    - GPU mode: bfloat16 if the GPU supports it (the QLoRA recipe), else float32;
    - CPU mode: a measured probe (``bfloat16_matmul_ratio``, a few milliseconds, once per process):
      bfloat16 if it is at most ``SLOW_BFLOAT16_RATIO`` times slower than float32, else float32.
    The results of a lesson differ slightly between the two dtypes (bfloat16 rounds to 8 bits of precision);
    its asserts hold for both.
    """
    raw = os.environ.get(COMPUTE_DTYPE_VARIABLE, "").strip().lower()
    if raw:
        if raw not in COMPUTE_DTYPES:
            raise ValueError(f"{COMPUTE_DTYPE_VARIABLE}={raw!r} is not a compute dtype; allowed values are "
                             f"{', '.join(map(repr, COMPUTE_DTYPES))} (or leave it unset to measure)")
        return ComputeDtypeChoice(COMPUTE_DTYPES[raw], f"set by {COMPUTE_DTYPE_VARIABLE}")
    if course_mode() == "gpu":
        if torch.cuda.is_bf16_supported():
            return ComputeDtypeChoice(torch.bfloat16, "the GPU supports bfloat16")
        return ComputeDtypeChoice(torch.float32, "the GPU has no bfloat16 support")
    if not _CPU_PROBE:
        _CPU_PROBE.append(bfloat16_matmul_ratio())
    ratio = _CPU_PROBE[0]
    if ratio <= SLOW_BFLOAT16_RATIO:
        return ComputeDtypeChoice(torch.bfloat16, f"this CPU multiplies bfloat16 at {ratio:.1f}x the time of float32")
    return ComputeDtypeChoice(torch.float32, f"this CPU multiplies bfloat16 at {ratio:.0f}x the time of float32: "
                                             "no native bfloat16 instructions")


def compute_dtype() -> torch.dtype:
    """The dtype for 4-bit layers' compute and 16-bit copies in the lessons: ``compute_choice().dtype``.

    Example: ``load_model(..., compute_dtype=compute_dtype())`` -> bfloat16 on a GPU, float32 on an AVX2 laptop.
    """
    return compute_choice().dtype


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
    cpu_capability: str
    mode: str
    compute: ComputeDtypeChoice

    def __str__(self) -> str:
        rows = [("python", self.python), ("platform", self.platform)]
        rows += list(self.packages)
        if self.cuda_device is None:
            rows.append(("cuda", "not available"))
        else:
            rows.append(("cuda", f"{self.cuda_device}, {_gib(self.cuda_memory_bytes or 0)}"))
        rows.append(("cpu threads", str(self.cpu_threads)))
        rows.append(("cpu kernels", self.cpu_capability))
        rows.append(("compute dtype", str(self.compute)))
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
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        mode=course_mode(),
        compute=compute_choice(),
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


SEED_VARIABLE = "QLORA_LESSONS_SEED"


def lesson_seed() -> int:
    """The seed the lesson was set up with (``torch.initial_seed()``): training loops and fresh random
    models in a lesson draw from it, so that a run with another seed repeats the whole lesson with other
    random numbers."""
    return torch.initial_seed()


# The look of every figure of the course, set by setup_lesson: 96 dpi draws one point of font as 1.33 CSS pixels,
# so 10-point text is 13 px on the screen and the smallest text the plots use ("small", 8.3 points) 11 px; a
# 6.4 x 3.2 inch figure is 614 x 307 px, readable in a notebook from a 1280-pixel-wide window. Plot functions give
# font sizes relative to font.size ("small", "large"), never in points, so this is the one place to change them.
FIGURE_STYLE = {"figure.figsize": (6.4, 3.2), "figure.dpi": 96, "savefig.dpi": 96, "font.size": 10,
                "axes.titlesize": "large", "axes.labelsize": "medium", "xtick.labelsize": "small",
                "ytick.labelsize": "small", "legend.fontsize": "small"}


def setup_lesson(seed: int = 0) -> str:
    """The setup cell of every lesson: seed everything, figures in the course's style (``FIGURE_STYLE``), quiet
    library warnings.

    ``QLORA_LESSONS_SEED=N`` in the environment replaces ``seed``: the tests run the lessons that train
    with other seeds this way, to check that every claim holds beyond the seed the lesson was written with.
    Returns the course mode and prints one line saying which it is and on what device.
    Example: ``MODE = setup_lesson(seed=0)`` prints ``course mode: cpu (device cpu, seed 0)``.
    """
    raw = os.environ.get(SEED_VARIABLE, "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"{SEED_VARIABLE}={raw!r} is not a seed; use a non-negative integer")
        seed = int(raw)
    seed_everything(seed)
    mode = course_mode()
    matplotlib = course_import("matplotlib")  # the lessons draw: without the course extra, say how to install it
    matplotlib.rcParams.update(FIGURE_STYLE)
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
