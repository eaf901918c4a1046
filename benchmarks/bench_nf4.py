"""Throughput of our 4-bit NF4 quantize and dequantize as a ratio to bitsandbytes, measured in the same run.

    python benchmarks/bench_nf4.py                 # 4096 x 4096, float32 and bfloat16, torch's default threads
    python benchmarks/bench_nf4.py --threads 1     # one thread for torch (bitsandbytes' C++ kernels use OpenMP)

Targets on CPU: quantize at least 1.0x bitsandbytes, dequantize at least 0.5x. Each function is run
``--reps`` times, interleaved with its bitsandbytes counterpart so both see the same machine load, and
the fastest run of each is compared. The outputs are checked to be identical before timing.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit

TARGETS = {"quantize": 1.0, "dequantize": 0.5}


def fastest(functions: dict, reps: int) -> dict:
    """The fastest of ``reps`` interleaved runs of each function, in seconds."""
    for function in functions.values():  # warm up (allocations, lookup tables, lazy imports)
        function()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(reps):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="the weight is size x size")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import bitsandbytes.functional as bnb

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    misses = 0
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(args.size, args.size).to(dtype)
        packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4")
        packed_bnb, state_bnb = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
        assert torch.equal(packed, packed_bnb.view(-1)) and torch.equal(state.absmax, state_bnb.absmax)
        assert torch.equal(dequantize_4bit(packed, state), bnb.dequantize_4bit(packed_bnb, state_bnb))
        best = fastest({
            "quantize ours": lambda w=w: quantize_4bit(w, blocksize=64, quant_type="nf4"),
            "quantize bitsandbytes": lambda w=w: bnb.quantize_4bit(w, blocksize=64, quant_type="nf4"),
            "dequantize ours": lambda p=packed, s=state: dequantize_4bit(p, s),
            "dequantize bitsandbytes": lambda p=packed_bnb, s=state_bnb: bnb.dequantize_4bit(p, s),
        }, args.reps)
        for step, target in TARGETS.items():
            ratio = best[f"{step} bitsandbytes"] / best[f"{step} ours"]  # throughput ours / throughput theirs
            ok = ratio >= target
            misses += not ok
            print(f"{str(dtype):15} {step:10}  ours {best[f'{step} ours'] * 1e3:7.1f} ms  "
                  f"bitsandbytes {best[f'{step} bitsandbytes'] * 1e3:7.1f} ms  ratio {ratio:5.2f}x  "
                  f"(target {target}x: {'met' if ok else 'MISSED'})")
    print("all targets met" if misses == 0 else f"{misses} target(s) missed")


if __name__ == "__main__":
    main()
