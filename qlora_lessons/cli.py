"""The command line: ``qlora-lessons env`` (the environment report), ``qlora-lessons memory MODEL`` ("does it fit?")
and ``qlora-lessons --check`` (the pre-flight check before a workshop, ``qlora_lessons.preflight``).

``qlora-lessons memory llama-3.1-8b --method qlora --r 16 --seq-len 2048 --gradient-checkpointing``
prints the estimate of one training step part by part, its peak, which common GPU sizes hold it, and
the largest batch and the longest sequence that fit ``--gpu-gib``; ``--trace`` also traces the step
with fake tensors (``trace_training_memory``) and shows estimate against trace; ``--json`` prints one
JSON object for scripts. MODEL is a preset (``qlora-lessons presets``), a config.json or a model folder,
or a hub id (read only when online). ``python -m qlora_lessons`` runs the same ``main``. The stack flags
(``--optimizer-impl``, ``--adapter-dtype``, ``--kbit-casts``, ``--attention``, ``--precision``) are the
estimator's knobs of the same names; the defaults are the stack lesson 02 traces.

Sizes are in GiB (2**30 bytes), as GPU memory is sold. Left out: the CUDA context (a few hundred MB
that a GPU holds besides the tensors) and allocator fragmentation; leave some headroom.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

GPU_GIB = (8, 12, 16, 24, 40, 48, 80)  # common cards: 8/12/16/24 GB consumer, 40/80 GB A100, 48 GB RTX A6000/L40S
GIB = 2**30
# --optimizer -> the estimator's optimizer; a paged optimizer's state is counted as resident (its worst case)
OPTIMIZER_CHOICES = {"adamw": "adamw", "adamw8bit": "adamw8bit", "paged_adamw_8bit": "adamw8bit",
                     "adamw32bit": "adamw32bit", "paged_adamw_32bit": "adamw32bit", "sgd": "sgd"}
_LABELS = {"weights": "weights", "quant_constants": "constants", "adapters": "adapters", "gradients": "gradients",
           "optimizer": "optimizer", "activations": "activations"}


class _Parser(argparse.ArgumentParser):
    """argparse, with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qlora-lessons", description="The qlora-lessons course: environment report and "
                     "training-memory calculator. Without a command, prints the environment report.")
    parser.add_argument("--check", action="store_true", help="the pre-flight check before a workshop: install, course "
                        "model, bitsandbytes on this CPU, JupyterLab and widgets; ends with PASS or FAIL (exit 0/1)")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    commands.add_parser("env", help="print versions, the CUDA device and the course mode",
                        description="Print python, torch, transformers, peft, bitsandbytes versions, the CUDA "
                                    "device and the course mode (qlora_lessons.describe_environment).")
    commands.add_parser("presets", help="list the model presets and where their shapes come from",
                        description="List the preset names MODEL accepts, with their parameter counts and sources.")
    memory = commands.add_parser("memory", help="memory of one training step, and whether it fits on a GPU",
                                 description="Estimate (and with --trace, trace) the memory of one training step.")
    memory.add_argument("model", metavar="MODEL", help="a preset (see 'qlora-lessons presets'), a config.json or "
                        "model folder, or a hub id such as Qwen/Qwen2.5-0.5B (read from the hub only when online)")
    memory.add_argument("--method", choices=("full", "lora", "qlora"), required=True,
                        help="full fine-tuning, LoRA on a frozen base, or LoRA on a 4-bit (NF4) base")
    memory.add_argument("--r", "--lora-r", type=int, default=16, metavar="R", action=_RenamedFlag,
                        help="LoRA rank, peft's r (default 16; --lora-r is the deprecated name)")
    memory.add_argument("--target-modules", "--target-modules", default="all-linear", action=_RenamedFlag,
                        metavar="all-linear|q_proj,v_proj", help="peft's target_modules: 'all-linear' (default) or "
                        "comma-separated module names (--target-modules is the deprecated name)")
    memory.add_argument("--batch-size", type=int, default=1, metavar="B", help="sequences per step (default 1)")
    memory.add_argument("--seq-len", type=int, default=512, metavar="T", help="tokens per sequence (default 512)")
    memory.add_argument("--gradient-checkpointing", action="store_true", help="keep only each layer's input")
    memory.add_argument("--optimizer", choices=tuple(OPTIMIZER_CHOICES), default="adamw",
                        help="adamw (torch, state in the weight dtype), adamw8bit, paged_adamw_8bit, adamw32bit, "
                             "paged_adamw_32bit (bitsandbytes; paged state counted as resident) or sgd")
    memory.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                        help="weights (full, lora) or compute dtype (qlora); default bfloat16")
    memory.add_argument("--optimizer-impl", choices=("for-loop", "foreach", "fused"), default="for-loop",
                        help="torch AdamW: for-loop (foreach=False, the default here), foreach (torch's CUDA default: "
                             "one more copy of the trained parameters during the step) or fused")
    memory.add_argument("--adapter-dtype", choices=("same", "bfloat16", "float16", "float32"), default="same",
                        help="LoRA adapters' dtype: same as --dtype (default) or e.g. float32 (peft's default)")
    memory.add_argument("--kbit-casts", action="store_true",
                        help="qlora: peft's prepare_model_for_kbit_training (float32 embeddings, lm_head and norms)")
    memory.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                        help="attention implementation: sdpa (default; no T x T matrix kept) or eager")
    memory.add_argument("--precision", choices=("pure", "autocast"), default="pure",
                        help="pure: every tensor in --dtype (default); autocast: full fine-tuning with float32 "
                             "weights under torch.autocast in --dtype")
    memory.add_argument("--gpu-gib", type=float, default=24.0, metavar="GIB",
                        help="the GPU to fit the largest batch and sequence into (default 24)")
    memory.add_argument("--trace", action="store_true", help="also trace the step with fake tensors (slower)")
    memory.add_argument("--traced-layers", type=int, default=1, metavar="K",
                        help="with --trace: trace K and K+1 layers and extend to the depth (default 1; 0: all)")
    memory.add_argument("--json", action="store_true", help="print one JSON object (bytes) instead of a table")
    return parser


class _RenamedFlag(argparse.Action):
    """Store the value; a flag given by its old name (the second option string) warns that it is deprecated."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string == self.option_strings[-1] and len(self.option_strings) > 1:
            warnings.warn(f"{option_string} is deprecated; use {self.option_strings[0]} (peft's name). The old "
                          "flag will be removed in the next release.", DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def _settings(args) -> dict:
    import torch

    targets = args.target_modules if args.target_modules == "all-linear" else tuple(
        t.strip() for t in args.target_modules.split(",") if t.strip())
    return dict(method=args.method, weight_dtype=getattr(torch, args.dtype),
                optimizer=OPTIMIZER_CHOICES[args.optimizer], r=args.r, target_modules=targets,
                batch_size=args.batch_size, seq_len=args.seq_len, gradient_checkpointing=args.gradient_checkpointing,
                optimizer_impl=args.optimizer_impl, kbit_casts=args.kbit_casts, attention=args.attention,
                precision=args.precision,
                adapter_dtype=None if args.adapter_dtype == "same" else getattr(torch, args.adapter_dtype))


def _largest(fits, start: int, limit: int) -> int:
    """The largest n in [start, limit] with fits(n) (fits is monotone: more tokens never need less); 0 if none."""
    if not fits(start):
        return 0
    low, high = start, start
    while high < limit and fits(min(2 * high, limit)):
        low = high = min(2 * high, limit)
    high = min(2 * high, limit)
    while low < high:  # fits(low), and high is either the limit or does not fit
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def memory_report(args) -> dict:
    """Everything ``qlora-lessons memory`` prints, as a dict of bytes and counts (what --json prints)."""
    from qlora_lessons.memory_estimate import estimate_training_memory
    from qlora_lessons.memory_layout import count_parameters
    from qlora_lessons.memory_models import load_config, model_shape

    if args.gpu_gib <= 0:
        raise ValueError(f"--gpu-gib must be positive, got {args.gpu_gib}")
    config = load_config(args.model, "MODEL")
    shape, settings = model_shape(config, "MODEL"), _settings(args)
    estimate = estimate_training_memory(config, **settings)
    budget = args.gpu_gib * GIB

    def fits(**change) -> bool:
        return estimate_training_memory(config, **{**settings, **change}).total <= budget

    positions = config.get("max_position_embeddings") or config.get("n_positions") or 2**20
    report = {
        "model": args.model, "model_type": shape.model_type, "parameters": sum(count_parameters(config).values()),
        "settings": {**settings, "weight_dtype": args.dtype, "optimizer": args.optimizer,
                     "adapter_dtype": args.adapter_dtype,
                     "target_modules": list(settings["target_modules"]) if settings["target_modules"] != "all-linear"
                     else "all-linear"},
        "estimate": _bytes(estimate), "peak_bytes": estimate.total,
        "fits_gib": {str(g): estimate.total <= g * GIB for g in GPU_GIB}, "gpu_gib": args.gpu_gib,
        "largest_batch_size": _largest(lambda n: fits(batch_size=n), 1, 4096),
        "longest_seq_len": _largest(lambda n: fits(seq_len=n), 1, int(positions)),
        "max_position_embeddings": int(positions), "trace": None,
    }
    if args.trace:
        report["trace"] = _trace(config, settings, args.traced_layers)
    return report


def _bytes(breakdown) -> dict:
    """The parts in bytes, and at_peak: what is held at the peak, which sums to peak_bytes."""
    parts = {f"{name}_bytes": int(value) for name, value in breakdown.parts().items()}
    resident = {name: int(getattr(breakdown, name)) for name in ("weights", "quant_constants", "adapters", "optimizer")}
    at_peak = {**resident, "activations_and_gradients": int(breakdown.total) - sum(resident.values())}
    return {**parts, "peak_bytes": int(breakdown.total), "at_peak_bytes": at_peak, "label": breakdown.label}


def _trace(config: dict, settings: dict, traced_layers: int) -> dict:
    import time

    from qlora_lessons.memory_trace import trace_training_memory

    if traced_layers < 0:
        raise ValueError(f"--traced-layers must be 0 (all) or positive, got {traced_layers}")
    start = time.perf_counter()
    print("tracing the step with fake tensors (no memory is allocated) ...", file=sys.stderr)
    with warnings.catch_warnings():  # transformers' deprecation notices are not for the reader of this table
        warnings.simplefilter("ignore", FutureWarning)
        trace = trace_training_memory(config, **settings, traced_layers=traced_layers or None, progress=True)
    return {**_bytes(trace), "seconds": round(time.perf_counter() - start, 1)}


def _gib(n: float) -> str:
    """Bytes in GiB, or in MiB below 1 GiB: ``_gib(2**30) -> "    1.00 GiB"``."""
    return f"{n / GIB:8.2f} GiB" if n >= GIB or n == 0 else f"{n / 2**20:8.1f} MiB"


def print_report(report: dict) -> None:
    """The table that ``qlora-lessons memory`` prints."""
    s, e, t = report["settings"], report["estimate"], report["trace"]
    targets = s["target_modules"] if isinstance(s["target_modules"], str) else ",".join(s["target_modules"])
    lora = f", r={s['r']} on {targets}"
    print(f"{report['model']} ({report['model_type']}, {report['parameters']:,} parameters): {s['method']}"
          f"{lora if s['method'] != 'full' else ''}, {s['weight_dtype']}, {s['optimizer']}, batch {s['batch_size']} x "
          f"{s['seq_len']} tokens{', gradient checkpointing' if s['gradient_checkpointing'] else ''}")
    stack = [f"AdamW {s['optimizer_impl']}" if s["optimizer"] == "adamw" else "", f"{s['attention']} attention",
             f"{s['adapter_dtype']} adapters" if s["method"] != "full" and s["adapter_dtype"] != "same" else "",
             "prepare_model_for_kbit_training casts" if s["kbit_casts"] else "",
             "torch.autocast" if s["precision"] == "autocast" else ""]
    print("stack: " + ", ".join(x for x in stack if x))
    header = f"{'':13s}{'estimate':>12s}" + (f"{'trace':>13s}{'est/trace':>11s}" if t else "")
    print(header)
    for name, label in _LABELS.items():
        line = f"{label:13s}{_gib(e[name + '_bytes'])}"
        if t:
            traced = t[name + "_bytes"]
            line += f" {_gib(traced)}{(e[name + '_bytes'] / traced if traced else 1):11.3f}"
        print(line)
    peak = f"{'peak':13s}{_gib(e['peak_bytes'])}"
    print(peak + (f" {_gib(t['peak_bytes'])}{e['peak_bytes'] / t['peak_bytes']:11.3f}" if t else ""))
    if t:
        print(f"trace: {t['label']}, {t['seconds']} s")
    print("fits on: " + ", ".join(f"{g} GiB {'yes' if ok else 'no'}" for g, ok in report["fits_gib"].items())
          + " (plus the CUDA context, a few hundred MB, not counted)")
    gpu = f"{report['gpu_gib']:g} GiB"
    print(f"on {gpu}: largest batch at {s['seq_len']} tokens: {report['largest_batch_size']}; longest sequence at "
          f"batch {s['batch_size']}: {report['longest_seq_len']} tokens (model maximum "
          f"{report['max_position_embeddings']})")


def _presets() -> None:
    from qlora_lessons.memory_layout import count_parameters
    from qlora_lessons.memory_models import PRESET_SOURCES, PRESETS

    for name in PRESETS:
        print(f"{name:15s} {sum(count_parameters(name).values()) / 1e9:7.2f}B  {PRESET_SOURCES[name]}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``qlora-lessons`` and ``python -m qlora_lessons``; errors exit with status 2."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        from qlora_lessons.preflight import main as preflight

        raise SystemExit(preflight())
    if args.command in (None, "env"):
        from qlora_lessons.env import main as env_main

        return env_main()
    try:
        if args.command == "presets":
            return _presets()
        report = memory_report(args)
    except (ValueError, TypeError) as error:
        parser.exit(2, f"qlora-lessons {args.command}: error: {error}\n")
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
