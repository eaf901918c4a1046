"""Memory of fine-tuning, part 4: trace a real training step with fake tensors, or measure it on a GPU.

``trace_training_memory`` builds the model of ``memory_step`` (``AutoModelForCausalLM`` of any family,
peft's LoRA, ``NF4Linear`` base layers for QLoRA) out of fake tensors: tensors with a shape, a
dtype and a device but no memory (``torch._subclasses.fake_tensor.FakeTensorMode``). It runs two
training steps (the first creates the optimizer state, the second is what every later step looks
like) under torch's memory tracker (``torch.distributed._tools.mem_tracker.MemTracker``), which adds
up the bytes of every tensor alive after each operation. So a laptop "runs" a 65B step: all 80
layers in about a minute on two cores, or 1 and 2 layers extended to 80 in seconds.
Where a step cannot be traced (an operation whose output size depends on values, as MoE experts
that gather their tokens with ``nonzero()``), it warns and returns the estimate, labelled so. MoE
families trace with transformers' default "grouped_mm" experts: every token's top-k rows go through
the experts in one call whose sizes do not depend on the routing, so the trace is of all T k rows.
``measure_training_memory`` runs the same two steps with real tensors on a CUDA GPU and reads
``torch.cuda.max_memory_allocated``.

Left out: the CUDA caching allocator's rounding to 512-byte blocks and cuBLAS workspaces, which a
measurement counts and a trace does not (fake tensors count exact bytes), and the CUDA context (a
few hundred MB), which neither counts but a GPU holds. One difference the other way: with
checkpointing and a frozen embedding, MemTracker's module hooks keep the embedding output of the
first step and its gradient (2 T h b) alive into the second.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from tqdm.auto import tqdm

from qlora_lessons.memory import MemoryBreakdown, check_config, count_lora_parameters, to_transformers_config
from qlora_lessons.memory_estimate import check_knobs
from qlora_lessons.memory_stack import stack_knobs
from qlora_lessons.memory_step import (
    build_training_model,
    count_model_bytes,
    decoder_layers,
    make_optimizer,
    materialize_fake,
    one_sequence,
    run_training_steps,
)
from qlora_lessons.renamed_arguments import renamed_arguments

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@functools.cache
def _peak_tracker_class() -> type:
    """The tracker class; torch.distributed's tools are imported on first use, not with the package."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType, _UpdateType

    class PeakTracker(MemTracker):
        """MemTracker keeping the peak, the largest gradients, and the activations after every operation.

        MemTracker also snapshots every running module on every operation, which costs time in
        proportion to the number of modules; a breakdown of the whole step does not need it. It counts a
        parameter's gradient as a backward temporary until the gradient hook sees it, a few operations
        later; ``activations`` takes such a gradient out of the moments it was counted in.
        """

        def __init__(self) -> None:
            super().__init__()
            self.moving: list[int] = []  # activations (forward-saved and backward temporaries) after each operation
            self.largest_gradients = 0
            self.peaks = {"passes": 0, "step": 0}  # the peak in forward and backward passes, and in optimizer steps
            self._born: dict[int, int] = {}  # id of a temporary's record -> operation it was made in

        def track_model(self, model: nn.Module, *others) -> None:
            """Track ``model`` and ``others``; frozen parameters get no gradient hooks (MemTracker fails on them)."""
            for parameter in model.parameters():
                if not parameter.requires_grad:
                    self._param_to_grad_hook_handles[parameter] = (_NoHook(), _NoHook())
            self.track_external(model, *others)

        def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
            super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
            if u_type == _UpdateType.ADD and winfo.reftype == _MemRefType.TEMP:
                self._born[id(winfo)] = len(self.moving)
            elif u_type == _UpdateType.REF and old_reftype == _MemRefType.TEMP and winfo.reftype == _MemRefType.GRAD:
                for index in range(self._born.pop(id(winfo), len(self.moving)), len(self.moving)):
                    self.moving[index] -= winfo.mem_consumed
            elif u_type == _UpdateType.DEL:
                self._born.pop(id(winfo), None)

        def _update_peak_stats(self, peak_state) -> None:
            for snap in self._curr_mem_snap.values():  # one device: the fake CPU
                phase = "step" if self._in_opt else "passes"
                self.peaks[phase] = max(self.peaks[phase], snap[_TOTAL_KEY])
                self.largest_gradients = max(self.largest_gradients, snap[_MemRefType.GRAD])
                self.moving.append(snap[_MemRefType.ACT] + snap[_MemRefType.TEMP])

    return PeakTracker


class _NoHook:
    def remove(self) -> None:
        pass


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors, each counted once (bitsandbytes shares its 8-bit maps)."""
    tensors = {id(t): t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _trace_depth(config: PretrainedConfig, knobs: dict, progress: bool | None = None
                 ) -> tuple[MemoryBreakdown, dict[str, int]]:
    """Trace two training steps of ``config`` at its full depth; also return the peak of each phase."""
    model = build_training_model(config, **{k: knobs[k] for k in _MODEL_KNOBS}, device="meta")  # shapes only
    layers = config.num_hidden_layers
    with FakeTensorMode(), tqdm(total=4 * layers, desc=f"tracing {layers} layers",
                                   disable=layers <= 8 if progress is None else not progress) as bar:
        materialize_fake(model)

        def count(*_) -> None:  # a hook that returned a value would replace the tensor it was given
            bar.update()

        def count_forward_and_backward(module, args, output) -> None:
            bar.update()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(count)

        for module in decoder_layers(model):
            module.register_forward_hook(count_forward_and_backward)
        model.train()
        optimizer = make_optimizer(model, knobs["optimizer"], traced=True, optimizer_impl=knobs["optimizer_impl"])
        input_ids = torch.randint(0, config.vocab_size, (knobs["batch_size"], knobs["seq_len"]))
        tracker = _peak_tracker_class()()
        tracker.track_model(model, optimizer, input_ids)
        with tracker, one_sequence():
            run_training_steps(model, optimizer, input_ids, between=tracker.reset_mod_stats,
                               autocast_dtype=_autocast_dtype(knobs))
        state = _state_bytes(optimizer)
    breakdown = MemoryBreakdown(**count_model_bytes(model), gradients=tracker.largest_gradients, optimizer=state,
                                activations=max(tracker.moving), total=max(tracker.peaks.values()), label="trace")
    return breakdown, tracker.peaks


_MODEL_KNOBS = ("method", "weight_dtype", "r", "target_modules", "gradient_checkpointing", "double_quant",
                "blocksize", "adapter_dtype", "kbit_casts", "attention", "precision")


def _autocast_dtype(knobs: dict) -> torch.dtype | None:
    return knobs["weight_dtype"] if knobs["precision"] == "autocast" else None


def _with_layers(config: PretrainedConfig, layers: int) -> PretrainedConfig:
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):  # Qwen3, Gemma: one attention type per layer
        config.layer_types = config.layer_types[:layers]
    return config


@renamed_arguments(lora_r="r", lora_targets="target_modules")
def trace_training_memory(config: PretrainedConfig, *, method: str = "full",
                          weight_dtype: torch.dtype = torch.float32,
                          optimizer: str = "adamw", r: int = 8,
                          target_modules: tuple[str, ...] | str = ("q_proj", "v_proj"), batch_size: int = 1,
                          seq_len: int = 512, gradient_checkpointing: bool = False, double_quant: bool = True,
                          blocksize: int = 64, traced_layers: int | None = None,
                          progress: bool | None = None, **stack) -> MemoryBreakdown:
    """Trace training steps of the real architecture with fake tensors and count every byte; ``total`` is the peak.

    The knobs are those of ``estimate_training_memory``. The parts are what the step held:
    weights, quant_constants, adapters from the model's tensors; gradients at their largest;
    optimizer state after the step; activations: the largest amount of forward-saved tensors and
    backward temporaries at any moment. ``total``: the most bytes alive at any moment.
    ``traced_layers=k`` traces k and k + 1 decoder layers and extends each part, and the peak of
    each phase (forward and backward passes; optimizer steps), linearly to the config's depth: the
    layers are identical, so each adds the same bytes, X(L) = X(k) + (L - k) (X(k+1) - X(k)). The
    peak is the larger phase at depth L, which need not be the larger one at depth k. ``None``
    traces every layer, which takes longer. ``progress``: a progress bar per traced depth (None: only
    past 8 layers).
    Shapes: input_ids (batch_size, seq_len) of random token ids.
    Example: ``trace_training_memory(model_config("llama-7b")).total -> about 108.9e9`` bytes.
    """
    knobs = check_knobs(method=method, weight_dtype=weight_dtype, optimizer=optimizer, r=r,
                        target_modules=target_modules, batch_size=batch_size, seq_len=seq_len,
                        gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize,
                        **stack_knobs(stack))
    check_config(config, "config")
    config = to_transformers_config(config)
    if method != "full":
        count_lora_parameters(config, r, target_modules)  # checks the rank against the targeted matrices
    if traced_layers is not None and (not isinstance(traced_layers, int) or isinstance(traced_layers, bool)
                                      or traced_layers < 1):
        raise ValueError(f"traced_layers must be a positive int or None, got {traced_layers!r}")
    depth = config.num_hidden_layers
    try:
        if traced_layers is None or traced_layers >= depth:
            return _trace_depth(config, knobs, progress)[0]
        (small, small_peaks), (large, large_peaks) = (_trace_depth(_with_layers(config, k), knobs, progress)
                                                      for k in (traced_layers, traced_layers + 1))
    except _UNTRACEABLE as error:  # e.g. MoE experts that pick their tokens with nonzero(): sizes a fake tensor lacks
        return _fall_back_to_estimate(config, knobs, error)
    extra = depth - traced_layers
    parts = {name: getattr(small, name) + extra * (getattr(large, name) - getattr(small, name))
             for name in MemoryBreakdown.PARTS}
    # each phase grows linearly; the deeper model's peak may sit in the other phase than the shallow one's
    total = max(small_peaks[phase] + extra * (large_peaks[phase] - small_peaks[phase]) for phase in small_peaks)
    return MemoryBreakdown(**parts, total=total, label="trace")


def _untraceable() -> tuple[type[Exception], ...]:
    from torch._subclasses import fake_tensor

    names = ("DynamicOutputShapeException", "DataDependentOutputException", "UnsupportedOperatorException")
    return tuple(getattr(fake_tensor, name) for name in names if hasattr(fake_tensor, name))


_UNTRACEABLE = _untraceable()
FALLBACK_ASSUMPTION = "balanced routing: each token goes to top-k experts"


def _fall_back_to_estimate(config, knobs: dict, error: Exception) -> MemoryBreakdown:
    """The estimate, labelled and warned about, where a step cannot be traced with fake tensors."""
    from qlora_lessons.memory_estimate import estimate_training_memory

    reason = (f"{type(config).__name__} cannot be traced with fake tensors ({type(error).__name__}: an operation "
              f"whose output size depends on the values, such as data-dependent expert routing)")
    assumption = f"; assumes {FALLBACK_ASSUMPTION}" if getattr(config, "num_local_experts", None) or getattr(
        config, "num_experts", None) else ""
    warnings.warn(f"{reason}: returning the estimate instead{assumption}", stacklevel=3)
    estimate = estimate_training_memory(config, **knobs)
    return dataclasses.replace(estimate, label=f"estimate, not traced{assumption}")


@renamed_arguments(lora_r="r", lora_targets="target_modules")
def measure_training_memory(config: PretrainedConfig, *, method: str = "full",
                            weight_dtype: torch.dtype = torch.float32,
                            optimizer: str = "adamw", r: int = 8,
                            target_modules: tuple[str, ...] | str = ("q_proj", "v_proj"), batch_size: int = 1,
                            seq_len: int = 512, gradient_checkpointing: bool = False, double_quant: bool = True,
                            blocksize: int = 64, **stack) -> MemoryBreakdown:
    """Run the traced steps for real on a CUDA GPU (random weights) and measure them; ``total`` is the peak.

    Equation: total = torch.cuda.max_memory_allocated() over the two steps, after
    torch.cuda.reset_peak_memory_stats() with the model and the batch in place. weights,
    quant_constants, adapters, gradients and optimizer are counted from the tensors, as in the
    trace; activations = the peak of the second step's forward and backward passes minus what was
    allocated when it began (for full fine-tuning that includes the gradients made by then). The
    optimizer is the real one: torch's AdamW or SGD, or bitsandbytes' AdamW8bit.
    Shapes: input_ids (batch_size, seq_len) of random token ids.
    Example: on a GPU, ``measure_training_memory(model_config("llama-7b"), method="qlora").total``.
    """
    knobs = check_knobs(method=method, weight_dtype=weight_dtype, optimizer=optimizer, r=r,
                        target_modules=target_modules, batch_size=batch_size, seq_len=seq_len,
                        gradient_checkpointing=gradient_checkpointing, double_quant=double_quant, blocksize=blocksize,
                        **stack_knobs(stack))
    check_config(config, "config")
    config = to_transformers_config(config)
    if method != "full":
        count_lora_parameters(config, r, target_modules)
    if not torch.cuda.is_available():
        raise RuntimeError("measure_training_memory needs a CUDA GPU (torch.cuda.max_memory_allocated) and torch "
                           f"{torch.__version__} sees none; use trace_training_memory, which needs no memory, or "
                           "memory_cpu.measure_cpu_training_memory, which measures real steps on the CPU")
    torch.cuda.empty_cache()
    model = build_training_model(config, **{k: knobs[k] for k in _MODEL_KNOBS}, device="cuda")
    model.train()
    opt = make_optimizer(model, optimizer, traced=False, optimizer_impl=knobs["optimizer_impl"])
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device="cuda")
    seen = {"peak": 0, "start": 0, "passes": 0, "gradients": 0}

    def second_step_begins() -> None:
        seen["peak"] = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seen["start"] = torch.cuda.memory_allocated()

    def before_optimizer_step() -> None:
        seen["passes"] = torch.cuda.max_memory_allocated() - seen["start"]
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        seen["gradients"] = max(seen["gradients"], grads)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run_training_steps(model, opt, input_ids, between=second_step_begins, before_step=before_optimizer_step,
                       autocast_dtype=_autocast_dtype(knobs))
    torch.cuda.synchronize()
    total = max(seen["peak"], torch.cuda.max_memory_allocated())
    return MemoryBreakdown(**count_model_bytes(model), gradients=seen["gradients"], optimizer=_state_bytes(opt),
                           activations=seen["passes"], total=total, label="measured")
