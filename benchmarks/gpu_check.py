"""Measured against traced against estimated peak training memory on a real CUDA GPU: ``make gpu-check``.

Builds randomly initialised models of three architectures from their presets (random weights need no
download and take the same memory as trained ones), runs real training steps for full (bf16, only where it
fits the card), LoRA and QLoRA (bitsandbytes NF4) with ``measure_training_memory``
(torch.cuda.max_memory_allocated), and prints the peak measured, traced (fake tensors) and estimated, and
the ratios. On a machine without CUDA it prints why and exits with status 2.
Run by hand: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py [--presets ...] [--seq-len 512]``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from qlora_lessons.memory import model_config
from qlora_lessons.memory_estimate import estimate_training_memory
from qlora_lessons.memory_trace import measure_training_memory, trace_training_memory

DEFAULT_PRESETS = ("qwen2.5-0.5b", "gemma-2-2b", "llama-3.1-8b")
METHODS = ("full", "lora", "qlora")
NO_CUDA = "gpu-check needs a CUDA GPU (torch.cuda.max_memory_allocated); torch {} sees none: nothing was measured"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch.__version__), file=sys.stderr)
        return 2
    card = torch.cuda.get_device_properties(0)
    print(f"{card.name}, {card.total_memory / 2**30:.1f} GiB; batch {args.batch_size}, {args.seq_len} tokens; GiB")
    print(f"{'preset':<14}{'method':<7}{'measured':>10}{'traced':>10}{'estimated':>11}{'meas/trace':>12}"
          f"{'meas/est':>10}")
    for preset in args.presets.split(","):
        config = model_config(preset)
        for method in METHODS:
            knobs = dict(method=method, weight_dtype=torch.bfloat16, batch_size=args.batch_size,
                         seq_len=args.seq_len, optimizer="adamw")
            estimated = estimate_training_memory(config, **knobs).total
            if estimated > 0.9 * card.total_memory:
                print(f"{preset:<14}{method:<7}skipped: the estimate, {estimated / 2**30:.1f} GiB, does not fit "
                      f"the card's {card.total_memory / 2**30:.1f} GiB")
                continue
            traced = trace_training_memory(config, traced_layers=1, **knobs).total
            measured = measure_training_memory(config, **knobs).total
            torch.cuda.empty_cache()
            print(f"{preset:<14}{method:<7}{measured / 2**30:>10.2f}{traced / 2**30:>10.2f}"
                  f"{estimated / 2**30:>11.2f}{measured / traced:>12.3f}{measured / estimated:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
