"""Maintainer tool for the course notebooks: write, execute and clean them.

    python tools/notebooks.py execute notebooks/05_nf4_by_hand.ipynb [...]   # run in CPU mode, save outputs
    python tools/notebooks.py clean notebooks/*.ipynb                          # strip execution noise only
    python tools/notebooks.py from-py lesson.py notebooks/05_nf4_by_hand.ipynb # percent-format script -> notebook

A code cell whose output nbval checks carries the cell tag `nbval-check-output`; in a percent-format script,
write `# NBVAL_CHECK_OUTPUT` as the cell's first line and `clean` turns it into the tag.
`execute` runs each notebook top to bottom in a fresh kernel (QLORA_LESSONS_MODE=cpu, offline, working
directory notebooks/), then cleans it, so the committed file is what a reader on GitHub should see.
The percent format: a line `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines
start with `# `.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import nbformat

KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")
KEEP_CELL_METADATA = ("tags",)
CHECK_TAG = "nbval-check-output"  # nbval compares this cell's saved output with a fresh run
CHECK_COMMENT = "# NBVAL_CHECK_OUTPUT"  # the same marker as a first line (percent-format scripts write it)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop execution noise: timing and widget metadata, and keep the python3 kernel."""
    nb.metadata = nbformat.from_dict({k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA})
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA})
        cell.setdefault("id", uuid.uuid4().hex[:8])  # nbformat 4.5: JupyterLab keeps ids, so opening changes nothing
        if cell.cell_type == "code" and cell.source.startswith(CHECK_COMMENT):
            # nbval's marker as a tag, not a line in the code learners read
            cell.source = cell.source[len(CHECK_COMMENT):].lstrip("\n")
            cell.metadata["tags"] = sorted({*cell.metadata.get("tags", []), CHECK_TAG})
        if cell.cell_type == "code":
            # A widget (a slider, a progress bar) lives in the kernel; saved, it is only a placeholder such as
            # "VBox(children=...)" or "  0%|  | 0/150". Readers on GitHub see the static figures instead.
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
            for output in cell.outputs:
                output.get("metadata", {}).pop("execution", None)
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def _poll_in_short_slices() -> None:
    """Make the async kernel client wait for a message in slices of at most 1 s.

    jupyter_client's ``AsyncZMQSocketChannel.get_msg`` waits on one ``socket.poll(timeout)``. After a
    cell that sends a burst of widget messages, that poll can miss the wake-up of the execute reply and
    return only when the whole per-cell timeout is over (seen with pyzmq 27 and jupyter_client 8.10):
    the notebook then stalls for ``--timeout`` seconds and the measured time is wrong. Polling again
    every second finds the waiting message.
    """
    from queue import Empty

    from jupyter_client.channels import AsyncZMQSocketChannel

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            if await self.socket.poll(int(step * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    AsyncZMQSocketChannel.get_msg = get_msg


def run(nb: nbformat.NotebookNode, directory: Path, timeout: int) -> float:
    """Execute ``nb`` in place in a fresh kernel (CPU mode, offline, working directory ``directory``).

    Returns the wall time in seconds, kernel start included; each code cell keeps nbclient's timestamps in
    ``metadata.execution`` until ``clean`` drops them (tools/workshop_times.py reads them).
    """
    from nbclient import NotebookClient

    _poll_in_short_slices()
    os.environ.update(QLORA_LESSONS_MODE="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(directory)}}).execute()
    return time.perf_counter() - start


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    seconds = run(nb, path.parent, timeout)
    nbformat.write(clean(nb), path)
    return seconds


def from_py(source: Path) -> nbformat.NotebookNode:
    """Split a percent-format script into cells."""
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.read_text().split("\n"):
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    return clean(nb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("execute")
    run.add_argument("notebooks", nargs="+", type=Path)
    run.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    tidy = sub.add_parser("clean")
    tidy.add_argument("notebooks", nargs="+", type=Path)
    convert = sub.add_parser("from-py")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.command == "execute":
        for path in args.notebooks:
            print(f"{path}: {execute(path, args.timeout):.1f} s", flush=True)
    elif args.command == "clean":
        for path in args.notebooks:
            nbformat.write(clean(nbformat.read(path, as_version=4)), path)
    else:
        nbformat.write(from_py(args.source), args.target)
        print(f"wrote {args.target} ({len(nbformat.read(args.target, as_version=4).cells)} cells)")


if __name__ == "__main__":
    sys.exit(main())
