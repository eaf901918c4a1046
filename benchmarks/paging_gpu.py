"""Paged vs non-paged AdamW at equal bits, under real GPU memory pressure: does paging save a long-batch spike?

QLoRA (Dettmers et al. 2023, section 3): a paged optimizer allocates its state in CUDA unified memory; the
driver evicts it to CPU RAM when the GPU runs out of memory and pages it back for the update. This script
shows it, or shows that it did not happen, on one CUDA GPU:

1. A stack of ``--layers`` Linear(width, width) + GELU layers (float32, every weight matrix over the 1e5
   elements from which bitsandbytes pages state) trains on short batches with bitsandbytes' ``AdamW{bits}bit``
   (the control) or ``PagedAdamW{bits}bit``, each in a fresh process (paged memory is never freed).
2. One long batch (``--long`` rows instead of ``--short``) is run without pressure to measure what it needs
   beyond what is held: ``need`` = the rise of ``torch.cuda.max_memory_reserved``.
3. A filler tensor takes the free physical memory (``torch.cuda.mem_get_info``) but ``need - slack``, where
   ``slack`` = half the state that bitsandbytes pages. The long batch now fits only if ``slack`` bytes of
   optimizer state leave the GPU: the control cannot, the paged optimizer can, if the driver evicts.
4. The long batch runs again. Device memory held outside torch's allocator (``total - free - reserved``:
   the CUDA context and the resident unified-memory pages) is read before, after backward and after the step:
   its fall is the state evicted, its rise the state paged back. Short steps after the spike are timed.

Prints one line per run and a verdict; ``--out FILE`` also writes them as JSON. Without CUDA it says so and
exits with status 2. Run on a GPU (about a minute on an H100/H200):
``python benchmarks/paging_gpu.py --out paging_gpu.json`` (add ``--bits 32 8`` for the 8-bit pair too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

NO_CUDA = "paging_gpu needs a CUDA GPU (unified memory, torch.cuda.mem_get_info); torch {} sees none: nothing was run"
GB = 1e9


def _outside_torch() -> int:
    """Device bytes in use that torch's caching allocator does not hold: context, libraries, unified memory."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def _step(model, optimizer, rows: int, width: int) -> None:
    x = torch.randn(rows, width, device="cuda")
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_one(variant: str, width: int, layers: int, short: int, long: int) -> dict:
    """One run in this process (a child): the control or the paged optimizer, through the four stages above."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(layers)
                                  for m in (torch.nn.Linear(width, width, device="cuda"), torch.nn.GELU())])
    bits = "8" if variant.endswith("8bit") else "32"
    name = f"{'Paged' if variant.startswith('paged') else ''}AdamW{bits}bit"
    optimizer = getattr(bnb.optim, name)(model.parameters(), lr=1e-5)
    result = {"variant": name, "outcome": "survived"}
    for _ in range(2):  # the first step creates the state (paged: allocated managed, prefetched to the GPU)
        _step(model, optimizer, short, width)
    torch.cuda.synchronize()
    result["paged_state_bytes"] = sum(t.nbytes for s in optimizer.state.values() for t in s.values()
                                      if getattr(t, "is_paged", False))
    # What bitsandbytes pages (m and v buffers of tensors of >= 1e5 elements), counted alike for both runs.
    pageable = sum(s[k].nbytes for p, s in optimizer.state.items() if p.numel() >= 1e5 for k in ("state1", "state2"))
    storages = {t.data_ptr(): t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)}
    result["state_bytes"] = sum(storages.values())  # the 8-bit code tables are shared: each storage once
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    _step(model, optimizer, long, width)  # no pressure yet: what the long batch needs beyond what is held
    torch.cuda.synchronize()
    result["need_bytes"] = need = torch.cuda.max_memory_reserved() - base
    torch.cuda.empty_cache()
    result["slack_bytes"] = slack = pageable // 2
    result["outside_torch_before"] = _outside_torch()
    free, total = torch.cuda.mem_get_info()
    filler = torch.empty(max(free - need + slack, 0), dtype=torch.uint8, device="cuda")  # plain cudaMalloc
    result["free_after_filler"] = torch.cuda.mem_get_info()[0]
    stage = "forward and backward"
    try:
        x = torch.randn(long, width, device="cuda")
        model(x).square().mean().backward()
        del x
        torch.cuda.synchronize()
        result["outside_torch_after_backward"] = _outside_torch()
        stage = "optimizer step"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        result["outside_torch_after_step"] = _outside_torch()
        times = []
        for _ in range(3):  # the spike's memory stays in torch's cache: can the state come back?
            start = time.perf_counter()
            _step(model, optimizer, short, width)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result["short_step_s_after_spike"] = times
        result["outside_torch_end"] = _outside_torch()
    except RuntimeError as error:  # torch.OutOfMemoryError, or a CUDA error raised by a bitsandbytes kernel
        if "out of memory" not in str(error).lower():
            raise
        result["outcome"] = f"out of memory at the long batch's {stage}"
    del filler
    return result


def verdict(control: dict, paged: dict) -> str:
    """What the pair of runs shows; a claim only when the control ran out of memory and the paged run did not."""
    if control["outcome"] == "survived":
        return "no claim: the control survived the pressure (the filler did not leave too little memory)"
    if paged["outcome"] != "survived":
        return "no claim: both ran out of memory (the driver did not evict enough paged state in time)"
    evicted = paged["outside_torch_before"] - paged["outside_torch_after_backward"]
    if evicted < paged["slack_bytes"] // 2:
        return (f"paged survived but only {evicted / GB:.3f} GB left the device outside torch: eviction not observed "
                "(no claim about why it survived)")
    return (f"paging shown: the control ran out of memory; the paged optimizer survived while {evicted / GB:.3f} GB "
            f"of device memory outside torch (its state) was evicted, against {paged['slack_bytes'] / GB:.3f} GB "
            "needed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--short", type=int, default=2048, help="rows of an ordinary batch")
    parser.add_argument("--long", type=int, default=16384, help="rows of the long batch (the spike)")
    parser.add_argument("--bits", type=int, nargs="+", default=[32], choices=(32, 8))
    parser.add_argument("--out", help="write the runs and verdicts as JSON to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one run, in a fresh process
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch.__version__), file=sys.stderr)
        return 2
    sizes = (args.width, args.layers, args.short, args.long)
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, *sizes)))
        return 0
    card = torch.cuda.get_device_properties(0)
    print(f"{card.name}, {card.total_memory / 2**30:.1f} GiB; {args.layers} x Linear({args.width}, {args.width}); "
          f"batches of {args.short} rows, one of {args.long}")
    report = {"card": card.name, "sizes": dict(zip(("width", "layers", "short", "long"), sizes)), "pairs": []}
    for bits in args.bits:
        runs = []
        for variant in (f"adamw{bits}bit", f"paged_adamw{bits}bit"):
            command = [sys.executable, os.path.abspath(__file__), "--child", variant, "--width", str(args.width),
                       "--layers", str(args.layers), "--short", str(args.short), "--long", str(args.long)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            run = json.loads(line[7:]) if line else {"variant": variant, "outcome": f"crashed: {done.stderr[-500:]}"}
            runs.append(run)
            shown = {k: (f"{v / GB:.3f} GB" if isinstance(v, int) and k != "variant" else v) for k, v in run.items()}
            print(json.dumps(shown))
        result = verdict(*runs) if all("need_bytes" in r for r in runs) else "no claim: a run crashed"
        print(f"{bits}-bit: {result}")
        report["pairs"].append({"bits": bits, "runs": runs, "verdict": result})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
