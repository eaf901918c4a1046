"""Benchmark: trace one QLoRA training step of LLaMA-65B on a laptop, and check the QLoRA paper's "< 48 GB".

Run by hand:  python benchmarks/bench_memory_trace.py  [--layers-only]

Setting (the QLoRA paper fine-tunes 65B on one 48 GB GPU this way): NF4 with double quantization
(blocksize 64), LoRA rank 64 on all linear layers, bfloat16 compute and adapters, AdamW, batch 1 of
512 tokens, gradient checkpointing. Targets: the traced peak of the full 80-layer model is below
48e9 bytes, and the trace takes less than 5 minutes on 2 CPU cores. Also printed: the trace of 1
and 2 layers extended to 80, the estimate, and their ratios to the full trace.
"""

from __future__ import annotations

import argparse
import time

import torch

from qlora_lessons import estimate_training_memory, model_config, trace_training_memory

SETTING = dict(method="qlora", weight_dtype=torch.bfloat16, optimizer="adamw", r=64, target_modules="all-linear",
               batch_size=1, seq_len=512, gradient_checkpointing=True, double_quant=True, blocksize=64)
BUDGET_BYTES, BUDGET_SECONDS = 48e9, 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers-only", action="store_true", help="skip the full 80-layer trace")
    args = parser.parse_args()
    config = model_config("llama-65b")
    print(f"llama-65b QLoRA, torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    extended = trace_training_memory(config, **SETTING, traced_layers=1)
    extended_seconds = time.perf_counter() - start
    estimate = estimate_training_memory(config, **SETTING)
    print(f"trace of 1 and 2 layers, extended to 80: {extended.total / 1e9:.2f} GB in {extended_seconds:.1f} s")
    print(f"estimate:                                 {estimate.total / 1e9:.2f} GB")
    print(extended)
    if args.layers_only:
        return

    start = time.perf_counter()
    full = trace_training_memory(config, **SETTING)
    seconds = time.perf_counter() - start
    print(f"trace of all 80 layers:                   {full.total / 1e9:.2f} GB in {seconds:.1f} s")
    print(full)
    print(f"ratios: peak / 48 GB = {full.total / BUDGET_BYTES:.3f}, time / 5 min = {seconds / BUDGET_SECONDS:.3f}, "
          f"extended / full trace = {extended.total / full.total:.4f}, estimate / full trace = "
          f"{estimate.total / full.total:.4f}")
    ok = full.total < BUDGET_BYTES and seconds < BUDGET_SECONDS
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
