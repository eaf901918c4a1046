"""Memory of fine-tuning, part 5: real training steps measured on the CPU, tensor by tensor and as the process.

``measure_cpu_training_memory`` runs the two training steps that ``trace_training_memory`` traces, for
real, with random weights, on the CPU, and measures them twice:

- tensor peak: torch's CPU allocator reports every allocation and free to the profiler
  (``torch.profiler.profile(profile_memory=True)``, "[memory]" events with signed sizes); adding them up in
  time order gives the bytes of live tensors at every moment, workspaces that kernels allocate through torch
  included. This is what the trace counts with fake tensors.
- resident peak: the process's resident set (``/proc/self/statm``) sampled every ``sample_every`` seconds
  from a thread while the steps run. It holds the tensors and everything else: memory the C allocator
  (glibc malloc) keeps after tensors are freed, oneDNN/MKL scratch buffers that do not go through torch,
  code and data of libraries loaded or initialised during the first step, and the profiler's own records.

QLoRA is measured with bitsandbytes' real ``Linear4bit`` (NF4, the weights quantized by
``bitsandbytes.functional.quantize_4bit`` when the layer moves to the CPU), not the trace's ``NF4Linear``
stand-in. Linux only (``/proc``); the tensor peak alone works everywhere.

Left out: the time the profiler adds (two steps take about 1.5x as long as without it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING

import torch
from torch import nn

from qlora_lessons.memory import check_config, count_lora_parameters, to_transformers_config
from qlora_lessons.memory_estimate import check_knobs
from qlora_lessons.memory_step import (
    _quiet_bitsandbytes,
    build_training_model,
    decoder_layers,
    make_optimizer,
    run_training_steps,
)
from qlora_lessons.renamed_arguments import renamed_arguments

if TYPE_CHECKING:
    from transformers import PretrainedConfig

STEPS_MARK = "qlora_lessons.training_steps"


@dataclass(frozen=True)
class CpuMeasurement:
    """Two real training steps on the CPU, in bytes: the trace, the live tensors, and the process's resident set.

    tensor_start / tensor_peak: bytes of live tensors when the steps begin and at their most.
    resident_before: the process before the model was built; resident_start: when the steps begin;
    resident_peak: the most during the steps. ``seconds``: the two steps, profiler included.
    """

    traced: int
    tensor_start: int
    tensor_peak: int
    resident_before: int
    resident_start: int
    resident_peak: int
    seconds: float

    @property
    def tensor_over_trace(self) -> float:
        """Real tensor peak / traced peak: 1.0 where the trace counts every tensor the real step makes."""
        return self.tensor_peak / self.traced

    @property
    def resident_growth(self) -> int:
        """Resident peak above the process before the model: what a system monitor shows the step costing."""
        return self.resident_peak - self.resident_before

    @property
    def untracked(self) -> int:
        """Resident growth that no live tensor explains: allocator caching, library scratch, profiler records."""
        return self.resident_growth - self.tensor_peak

    def __repr__(self) -> str:
        gb = 1e9
        return (f"CpuMeasurement(traced={self.traced / gb:.3f} GB, tensor_peak={self.tensor_peak / gb:.3f} GB "
                f"(x{self.tensor_over_trace:.4f} the trace), resident_growth={self.resident_growth / gb:.3f} GB "
                f"(untracked {self.untracked / gb:.3f} GB), {self.seconds:.1f} s)")


def resident_bytes() -> int:
    """The process's resident set size now, in bytes (Linux: the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _ResidentSampler(threading.Thread):
    """Samples ``resident_bytes()`` every ``every`` seconds until stopped; keeps the largest."""

    def __init__(self, every: float) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self._stop_event = every, resident_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, resident_bytes())
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, resident_bytes())


def to_bitsandbytes_4bit(model: nn.Module, *, blocksize: int, double_quant: bool,
                         compute_dtype: torch.dtype) -> int:
    """Replace each frozen linear layer (or GPT-2 Conv1D) inside the decoder layers by bitsandbytes' NF4 ``Linear4bit``.

    The layers ``build_training_model`` would make ``NF4Linear`` (LoRA adapters, embeddings, lm_head and
    3-D expert tensors stay). The weight W (out, in) is quantized by bitsandbytes when the layer moves to the
    CPU. Returns the number of layers replaced. Example: 7 per Llama decoder layer.
    """
    with _quiet_bitsandbytes():
        import bitsandbytes as bnb

    layers = {id(m) for m in decoder_layers(model)}
    inside = {id(m) for layer in decoder_layers(model) for m in layer.modules() if id(m) not in layers}
    replaced = 0
    for module_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            weight = getattr(child, "weight", None)
            conv1d = type(child).__name__ == "Conv1D"
            if (id(child) not in inside or "lora_" in module_name + child_name or weight is None
                    or weight.dim() != 2 or not (isinstance(child, nn.Linear) or conv1d)):
                continue
            w = (weight.t() if conv1d else weight).detach().contiguous()  # Conv1D stores W as (in, out)
            bias = getattr(child, "bias", None)
            layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=bias is not None, compute_dtype=compute_dtype,
                                      compress_statistics=double_quant, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", blocksize=blocksize,
                                             compress_statistics=double_quant)
            if bias is not None:
                layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            setattr(module, child_name, layer.to("cpu"))
            replaced += 1
    return replaced


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send file descriptor 2 (C++ code's stderr) to /dev/null for the duration; Python's own is flushed first."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tensor_bytes(prof) -> tuple[int, int]:
    """(live bytes when the steps began, most live bytes during them) from the profiler's allocator events."""
    events = prof.profiler.kineto_results.events()
    marks = [e for e in events if e.name() == STEPS_MARK]
    if not marks:
        raise RuntimeError(f"the profiler recorded no '{STEPS_MARK}' range: nothing was measured")
    begin, end = marks[0].start_ns(), marks[0].end_ns()
    live, start, peak = 0, None, 0
    for t, n_bytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        if start is None and t >= begin:
            start = peak = live
        live += n_bytes
        if begin <= t <= end:
            peak = max(peak, live)
    return (live if start is None else start), peak


def _in_fresh_process(config, mmap_threshold: int | None, **kwargs) -> CpuMeasurement:
    """``measure_cpu_training_memory`` in a spawned Python process, with glibc's mmap threshold if given."""
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(measure_cpu_training_memory, config, fresh_process=False, **kwargs).result()
    finally:
        if mmap_threshold is not None:
            if saved is None:
                os.environ.pop("MALLOC_MMAP_THRESHOLD_")
            else:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


@renamed_arguments(lora_r="r", lora_targets="target_modules")
def measure_cpu_training_memory(config: PretrainedConfig, *, fresh_process: bool = True,
                                mmap_threshold: int | None = None, sample_every: float = 0.002, trace: bool = True,
                                **knobs) -> CpuMeasurement:
    """Run two real training steps on the CPU and measure live tensor bytes and resident memory; see the module.

    ``knobs`` are those of ``trace_training_memory`` (method, weight_dtype, optimizer, r, target_modules,
    batch_size, seq_len, gradient_checkpointing, double_quant, blocksize, and the stack: optimizer_impl,
    adapter_dtype, kbit_casts, attention, precision). ``trace=False`` skips the trace
    (``traced`` is then 0). The profiler starts before the model is built, so ``tensor_start`` is every
    byte torch's allocator holds for the model, the optimizer and the batch.
    ``fresh_process``: measure in a new Python process (spawned), so that memory this process freed earlier
    and the C allocator kept (a previous measurement, a lesson's earlier cells) does not hide the step's
    growth; the tensor peak is the same either way. ``mmap_threshold`` (bytes, with ``fresh_process``): set
    glibc's ``MALLOC_MMAP_THRESHOLD_`` in that process, so every allocation at least that large gets its own
    mapping and goes back to the system when freed; 131072 (glibc's starting value, which it otherwise
    raises as large blocks are freed) shows how much of the resident gap is memory malloc keeps.
    Shapes: input_ids (batch_size, seq_len) of random token ids.
    Example: ``measure_cpu_training_memory(config, method="lora", target_modules="all-linear").tensor_over_trace``
    -> 1.0000 for a 12-layer Llama of hidden size 1024.
    """
    from qlora_lessons.memory_trace import _MODEL_KNOBS, _autocast_dtype, trace_training_memory

    defaults = dict(method="full", weight_dtype=torch.float32, optimizer="adamw", r=8,
                    target_modules=("q_proj", "v_proj"), batch_size=1, seq_len=512, gradient_checkpointing=False,
                    double_quant=True, blocksize=64, optimizer_impl="for-loop", adapter_dtype=None,
                    kbit_casts=False, attention="sdpa", precision="pure")
    unknown = set(knobs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown knobs {sorted(unknown)}; measure_cpu_training_memory takes {sorted(defaults)}")
    knobs = check_knobs(**{**defaults, **knobs})
    if not isinstance(sample_every, (int, float)) or isinstance(sample_every, bool) or not 0 < sample_every <= 1:
        raise ValueError(f"sample_every must be a number of seconds in (0, 1], got {sample_every!r}")
    check_config(config, "config")
    config = to_transformers_config(config)
    if knobs["method"] != "full":
        count_lora_parameters(config, knobs["r"], knobs["target_modules"])
    if not isinstance(fresh_process, bool):
        raise TypeError(f"fresh_process must be True or False, got {fresh_process!r}")
    if mmap_threshold is not None and (not fresh_process or not isinstance(mmap_threshold, int)
                                       or isinstance(mmap_threshold, bool) or mmap_threshold < 1):
        raise ValueError(f"mmap_threshold must be a positive number of bytes and needs fresh_process=True, got "
                         f"{mmap_threshold!r} with fresh_process={fresh_process}")
    if fresh_process:
        return _in_fresh_process(config, mmap_threshold, sample_every=sample_every, trace=trace, **knobs)
    traced = int(trace_training_memory(config, **knobs, progress=False).total) if trace else 0
    model_knobs = {k: knobs[k] for k in _MODEL_KNOBS}
    resident_before = resident_bytes()
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():  # the profiler's C++ side prints a line on start and on stop
        prof.start()
    try:
        if knobs["method"] == "qlora":  # the LoRA model, then bitsandbytes' own 4-bit layers under the adapters
            model = build_training_model(config, **{**model_knobs, "method": "lora"}, device="cpu")
            to_bitsandbytes_4bit(model, blocksize=knobs["blocksize"], double_quant=knobs["double_quant"],
                                 compute_dtype=knobs["weight_dtype"])
        else:
            model = build_training_model(config, **model_knobs, device="cpu")
        model.train()
        opt = make_optimizer(model, knobs["optimizer"], traced=False, optimizer_impl=knobs["optimizer_impl"])
        input_ids = torch.randint(0, config.vocab_size, (knobs["batch_size"], knobs["seq_len"]))
        resident_start = resident_bytes()
        sampler = _ResidentSampler(sample_every)
        sampler.start()
        began = time.perf_counter()
        with torch.profiler.record_function(STEPS_MARK):
            run_training_steps(model, opt, input_ids, autocast_dtype=_autocast_dtype(knobs))
        seconds = time.perf_counter() - began
        resident_peak = sampler.stop()
    finally:
        with _quiet_native_stderr():
            prof.stop()
    tensor_start, tensor_peak = _tensor_bytes(prof)
    return CpuMeasurement(traced=traced, tensor_start=tensor_start, tensor_peak=tensor_peak,
                          resident_before=resident_before, resident_start=resident_start,
                          resident_peak=resident_peak, seconds=seconds)
