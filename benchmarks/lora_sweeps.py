"""Run the LoRA sweeps of lesson 04 on the course model and write qlora_lessons/lora_sweeps.json.

Run by hand (about 20 minutes on a busy 2-core machine, one torch thread per run; 33 runs):

    .venv/bin/python benchmarks/lora_sweeps.py            # every sweep, a progress bar over the runs
    .venv/bin/python benchmarks/lora_sweeps.py --only rank --dry-run   # list the runs of one sweep

The sweeps (100 steps of batch 32, fewer than the lessons' 150 to keep the sweeps near 20 minutes; AdamW,
warm-up 10, cosine decay; held-out exact match on 360 questions):
- rank: all linear layers, r = 1, 2, 4, 8, 16 with alpha = 2r (scaling 2), lr 3e-3, seeds 0, 1, 2;
- alpha_lr: all linear layers at r = 4, alpha in {2, 8, 32} (scaling 0.5, 2, 8) x lr in {1e-3, 3e-3, 1e-2}, seed 0;
- conventions: all linear layers at r = 4, 16, 64 with alpha = 16 and scaling alpha / r (the LoRA paper fixes
  alpha; QLoRA's r = 64, alpha = 16 is scaling 0.25) or alpha / sqrt(r) (rsLoRA), against alpha = 2r, lr 3e-3, seed 0;
- budget: equal budgets, seeds 0, 1, 2: Wq, Wv at r = 8 (32,768 parameters) against all linear at r = 2 (34,816,
  from the rank sweep), and full fine-tuning at lr 3e-4 (lesson 01's).
A point already in the file with the same settings is not run again unless --rerun is given.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from tqdm.auto import tqdm

from qlora_lessons.lora_sweeps import SWEEPS_FILE, SweepPoint, load_sweeps, run_point, save_sweeps, sweeps_about

STEPS, LR = 100, 3e-3  # 100 steps, not the lessons' 150: the sweeps' 33 runs then take about 20 minutes
SEEDS = (0, 1, 2)


def planned_points(steps: int = STEPS) -> list[SweepPoint]:
    """Every point of every sweep, in the order they run."""
    points = [SweepPoint("rank", "all-linear", r, 2.0 * r, "alpha/r", LR, seed, steps)
              for r in (1, 2, 4, 8, 16) for seed in SEEDS]
    points += [SweepPoint("alpha_lr", "all-linear", 4, alpha, "alpha/r", lr, 0, steps)
               for alpha in (2.0, 8.0, 32.0) for lr in (1e-3, 3e-3, 1e-2)]
    # some of these are runs of the other sweeps (same scaling), which run once
    points += [SweepPoint("conventions", "all-linear", r, alpha, convention, LR, 0, steps)
               for r in (4, 16, 64)
               for alpha, convention in ((16.0, "alpha/r"), (16.0, "alpha/sqrt(r)"), (2.0 * r, "alpha/r"))]
    points += [SweepPoint("budget", "q_proj,v_proj", 8, 16.0, "alpha/r", LR, seed, steps) for seed in SEEDS]
    points += [SweepPoint("budget", "full", 0, 0.0, "alpha/r", 3e-4, seed, steps) for seed in SEEDS]
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one sweep: rank, alpha_lr, conventions or budget")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rerun", action="store_true", help="run points already in the file again")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    args = parser.parse_args()
    planned = [p for p in planned_points(args.steps) if args.only in (None, p.sweep)]
    existing = load_sweeps() if SWEEPS_FILE.exists() else []
    kept = [p for p in existing if p.sweep not in {q.sweep for q in planned}]  # other sweeps stay in the file
    done = {} if args.rerun else {p.key(): p for p in existing}
    if args.dry_run:
        for point in planned:
            print(point.key(), "done" if point.key() in done else "to run")
        return
    earlier = sweeps_about()["seconds"] if existing and not args.rerun else 0  # time of the runs reused
    points, start = [], time.perf_counter() - earlier
    for point in tqdm(planned, desc="LoRA sweeps"):
        if point.key() not in done:
            done[point.key()] = run_point(point)
            save_sweeps([*kept, *points, done[point.key()]], torch=torch.__version__, threads=1,
                        machine=platform.machine(), seconds=round(time.perf_counter() - start))
        results = {k: getattr(done[point.key()], k) for k in ("em", "trainable", "seconds")}
        points.append(SweepPoint(**{**point.__dict__, **results}))  # the planned settings, the run's results
    save_sweeps([*kept, *points], torch=torch.__version__, threads=1, machine=platform.machine(),
                seconds=round(time.perf_counter() - start))
    print(f"{len(kept) + len(points)} points in {SWEEPS_FILE}")


if __name__ == "__main__":
    main()
