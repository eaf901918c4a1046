"""Maintainer tool: measure how long each lesson and each of its sections computes, for the workshop plans.

    python tools/workshop_times.py run                 # execute every lesson in CPU mode, write the results
    python tools/workshop_times.py run notebooks/06_double_quantization.ipynb   # re-measure one lesson
    python tools/workshop_times.py run --save          # the same, and save the executed notebooks
    python tools/workshop_times.py render              # rewrite workshop/times.md and the plans from times.json

`run` executes each notebook top to bottom in a fresh kernel, as `tools/notebooks.py execute` does (CPU mode,
offline, working directory notebooks/); without --save it leaves the notebook files untouched. A section is what
lies between two `## ` headings of the lesson; its time is the sum of its code cells' execution times (nbclient's
timestamps: from the kernel going busy to the execute reply). The lesson's time is the wall time of the whole
run, kernel start included. The results go to workshop/times.json with the machine they were measured on
(CPU count, load average before and after: run it on an idle machine), then `render` writes:

- workshop/times.md, the table of every lesson and section;
- the measured times in the plans: in any workshop/*.md, text between `<!--t:KEY-->` and `<!--/t-->` is
  replaced by the compute time of KEY. KEY is a lesson (`06`), a section of it (`06:3` for the section whose
  heading starts with "3.", `06:Exercises` for the one whose heading starts with that word), or several of
  them joined by `+` (`01+02:1+02:2`), which are added up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import clean, run  # noqa: E402  (tools/notebooks.py: the same kernel, mode and working directory)

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = ROOT / "workshop"
TIMES = WORKSHOP / "times.json"
TABLE = WORKSHOP / "times.md"
MARKER = re.compile(r"<!--t:([^>]+?)-->(.*?)<!--/t-->", re.S)
OPENING = "(opening)"


def _seconds(execution: dict) -> float:
    """A code cell's time from nbclient's timestamps (busy -> execute reply), 0 if it has none."""
    start, end = execution.get("iopub.status.busy"), execution.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = dt.datetime.fromisoformat
    return max(0.0, (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds())


def sections(nb: nbformat.NotebookNode) -> list[dict]:
    """The lesson's sections in order: heading, compute seconds, code cells, exercise checks.

    A markdown cell with `## ` headings starts a new section (named by its headings joined with " + ", e.g.
    "Recap + Exercises"); the cells above the first one form the section "(opening)". An exercise is a code
    cell that calls a `lessonNN.check_` function on a learner's answer.
    """
    result = [{"heading": OPENING, "seconds": 0.0, "code_cells": 0, "exercises": 0}]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = [line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")]
            if headings:
                result.append({"heading": " + ".join(headings), "seconds": 0.0, "code_cells": 0, "exercises": 0})
        elif cell.cell_type == "code":
            section = result[-1]
            section["seconds"] += _seconds(cell.metadata.get("execution", {}))
            section["code_cells"] += 1
            section["exercises"] += bool(re.search(r"lesson\d\d\.check_\w+\((?!lesson\d\d\.solution)", cell.source))
    for section in result:
        section["seconds"] = round(section["seconds"], 1)
    return [s for s in result if s["heading"] != OPENING or s["code_cells"]]


def measure(path: Path, timeout: int, save: bool = False) -> dict:
    """Execute one lesson and return its times; with ``save``, also save its outputs as notebooks.py execute does."""
    nb = nbformat.read(path, as_version=4)
    title = next((line[2:].strip() for line in nb.cells[0].source.splitlines() if line.startswith("# ")), path.stem)
    seconds = run(nb, path.parent, timeout)
    parts = sections(nb)
    if save:
        nbformat.write(clean(nb), path)
    return {"notebook": path.name, "title": title, "seconds": round(seconds, 1),
            "cells_seconds": round(sum(s["seconds"] for s in parts), 1), "sections": parts}


def machine() -> dict:
    """Where the times were measured: they scale with the CPU and with whatever else it was running."""
    import torch

    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_before": round(os.getloadavg()[0], 2)}


def lookup(times: dict, key: str) -> float:
    """Compute seconds of KEY: `06`, `06:3`, `06:Exercises`, or several joined by `+` (see the module docstring)."""
    lessons = {entry["notebook"][:2]: entry for entry in times["lessons"]}
    total = 0.0
    for item in key.split("+"):
        number, _, section = item.strip().partition(":")
        if number not in lessons:
            raise ValueError(f"key {key!r}: no lesson {number!r} in {TIMES.name}")
        if not section:
            total += lessons[number]["seconds"]
            continue
        prefix = f"{section}." if section.isdigit() else section
        found = [s for s in lessons[number]["sections"] if s["heading"].startswith(prefix)]
        if len(found) != 1:
            raise ValueError(f"key {key!r}: {len(found)} sections of lesson {number} start with {prefix!r}")
        total += found[0]["seconds"]
    return total


def human(seconds: float) -> str:
    """``human(41.2) -> "41 s"``, ``human(130) -> "2.2 min"``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def table(times: dict) -> str:
    """workshop/times.md: the machine, one line per lesson, then each lesson's sections."""
    m = times["machine"]
    lines = ["# Measured compute times of the lessons (CPU mode)", "",
             "Generated by `python tools/workshop_times.py run` from `times.json`; do not edit by hand.", "",
             f"Measured {m['date']} on {m['platform']} ({m['processor']}, {m['cpu_count']} CPUs, torch "
             f"{m['torch']} with {m['torch_threads']} thread{'s' * (m['torch_threads'] != 1)}, Python {m['python']}); "
             f"load average "
             f"{m['load_average_before']} before and {m.get('load_average_after', '?')} after the run. A lesson's "
             "time is its whole run in a fresh kernel (kernel start included); a section's is the sum of its "
             "code cells. A laptop with more cores is faster; a busy machine is slower.", "",
             "| Lesson | Compute | Code cells | Exercises |", "|---|---:|---:|---:|"]
    for entry in times["lessons"]:
        cells = sum(s["code_cells"] for s in entry["sections"])
        exercises = sum(s["exercises"] for s in entry["sections"])
        lines.append(f"| {entry['title']} | {human(entry['seconds'])} | {cells} | {exercises} |")
    total = sum(entry["seconds"] for entry in times["lessons"])
    lines += [f"| **All notebooks** | **{human(total)}** | | |", ""]
    for entry in times["lessons"]:
        lines += [f"## {entry['title']}", "", f"`notebooks/{entry['notebook']}`: {human(entry['seconds'])} in all, "
                  f"{human(entry['cells_seconds'])} in its cells.", "",
                  "| Section | Compute | Code cells | Exercises |", "|---|---:|---:|---:|"]
        lines += [f"| {s['heading']} | {s['seconds']:.1f} s | {s['code_cells']} | {s['exercises'] or ''} |"
                  for s in entry["sections"]]
        lines.append("")
    return "\n".join(lines)


def fill(text: str, times: dict) -> str:
    """Replace every `<!--t:KEY-->...<!--/t-->` in ``text`` by KEY's measured compute time."""
    return MARKER.sub(lambda m: f"<!--t:{m.group(1)}-->{human(lookup(times, m.group(1)))}<!--/t-->", text)


def render(times: dict, folder: Path = WORKSHOP) -> list[Path]:
    """Write times.md and refresh the times in every plan of ``folder``; return the files changed."""
    changed = []
    outputs = {folder / TABLE.name: table(times)}
    for plan in sorted(folder.glob("*.md")):
        if plan.name != TABLE.name:
            outputs[plan] = fill(plan.read_text(), times)
    for path, text in outputs.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    measure_ = sub.add_parser("run", help="execute lessons and record their times")
    measure_.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson in notebooks/")
    measure_.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    measure_.add_argument("--save", action="store_true", help="also save the executed notebooks (as notebooks.py "
                          "execute does), so one run both re-executes and measures the lessons")
    sub.add_parser("render", help="rewrite times.md and the plans' times from times.json")
    args = parser.parse_args()
    if args.command == "run":
        paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        old = json.loads(TIMES.read_text()) if TIMES.exists() and args.notebooks else {"lessons": []}
        times = {"machine": machine(), "lessons": old["lessons"]}
        for path in paths:
            entry = measure(path, args.timeout, args.save)
            print(f"{path.name}: {entry['seconds']:.1f} s", flush=True)
            times["lessons"] = sorted([e for e in times["lessons"] if e["notebook"] != entry["notebook"]] + [entry],
                                      key=lambda e: e["notebook"])
            times["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
            TIMES.write_text(json.dumps(times, indent=1) + "\n")  # after each lesson: a stopped run keeps its part
    times = json.loads(TIMES.read_text())
    for path in render(times):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
