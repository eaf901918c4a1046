"""Estimate against trace on the published sizes of every family: exact counts, est/trace ratios, trace times.

Run by hand: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory_any_model.py [--presets qwen2.5-0.5b,...]
[--methods full,lora,qlora] [--seq-lens 512,2048] [--traced-layers 1]``. For each preset and method it prints

- the exact parameter count (the model built on the meta device by ``AutoModelForCausalLM.from_config``) and
  the estimator's count (``count_parameters``), which must be equal;
- est/trace of the peak at each sequence length, without and with gradient checkpointing (target: within
  0.90-1.10), and of weights, gradients and optimizer state (target: within 0.99-1.01);
- the seconds the trace took (``traced_layers`` layers and one more, extended to the depth).

A step that cannot be traced with fake tensors is reported as "not traced" with the estimator's assumption.
Every full setting traces a step of a full bf16 model; QLoRA and LoRA use r = 16 on all linear layers.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from qlora_lessons.memory_estimate import estimate_training_memory
from qlora_lessons.memory_layout import count_parameters
from qlora_lessons.memory_models import PRESET_NAMES
from qlora_lessons.memory_trace import trace_training_memory

DEFAULT_PRESETS = ("llama-3.1-8b", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen3-8b", "gemma-2-2b",
                   "phi-3-mini", "mixtral-8x7b")


def exact_count(name: str) -> int:
    """Parameters of the model that transformers builds from the preset's config, on the meta device."""
    from transformers import AutoModelForCausalLM

    from qlora_lessons.memory import model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(name))
    return sum(p.numel() for p in model.parameters())


def compare(name: str, method: str, seq_len: int, checkpointing: bool, traced_layers: int) -> dict:
    """est/trace of each part and of the peak, and the trace's seconds, for one setting."""
    setting = dict(method=method, weight_dtype=torch.bfloat16, r=16, target_modules="all-linear",
                   seq_len=seq_len, gradient_checkpointing=checkpointing)
    estimate = estimate_training_memory(name, **setting)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trace = trace_training_memory(name, **setting, traced_layers=traced_layers)
    seconds = time.perf_counter() - start
    ratios = {part: getattr(estimate, part) / getattr(trace, part) if getattr(trace, part) else 1.0
              for part in ("weights", "gradients", "optimizer", "activations", "total")}
    return {"ratios": ratios, "seconds": seconds, "label": trace.label, "peak_gib": estimate.total / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help=f"from {', '.join(PRESET_NAMES)}")
    parser.add_argument("--methods", default="full,lora,qlora")
    parser.add_argument("--seq-lens", default="512,2048")
    parser.add_argument("--traced-layers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':14s} {'method':6s} {'exact':>15s} {'estimator':>15s}  "
          f"{'T':>5s} {'ckpt':>4s} {'peak GiB':>9s} {'est/trace':>9s} {'w,g,opt':>17s} {'trace s':>8s}")
    for name in args.presets.split(","):
        exact, counted = exact_count(name), sum(count_parameters(name).values())
        for method in args.methods.split(","):
            for seq_len in (int(t) for t in args.seq_lens.split(",")):
                for checkpointing in (False, True):
                    try:
                        r = compare(name, method, seq_len, checkpointing, args.traced_layers)
                    except ValueError as error:  # e.g. GPT-2's 1024 learned positions
                        print(f"{name:14s} {method:6s} {seq_len:5d}: {error}")
                        break
                    fixed = ",".join(f"{r['ratios'][p]:.3f}" for p in ("weights", "gradients", "optimizer"))
                    note = "" if r["label"] == "trace" else f"  ({r['label']})"
                    print(f"{name:14s} {method:6s} {exact:15,d} {counted:15,d}  {seq_len:5d} "
                          f"{'yes' if checkpointing else 'no':>4s} {r['peak_gib']:9.2f} {r['ratios']['total']:9.3f} "
                          f"{fixed:>17s} {r['seconds']:8.1f}{note}", flush=True)


if __name__ == "__main__":
    main()
