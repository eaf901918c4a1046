"""The learner's workspace: copies of the lessons that JupyterLab opens, edits and autosaves.

The notebooks in ``notebooks/`` are the course as published; a ``git pull`` updates them. If JupyterLab
opened them directly, its autosave would rewrite them with the learner's edits and outputs, and the next
pull would conflict. So ``make course`` runs ``python -m qlora_lessons.workspace prepare`` first: it
copies each lesson into ``workspace/`` (ignored by git) unless a copy is already there, and JupyterLab
opens the copies. A course update never touches ``workspace/``; new lessons are copied on the next
``make course``. To start a lesson again from the course's version, ``make fresh LESSON=04`` (or
``python -m qlora_lessons.workspace fresh 04``) copies it anew and keeps the old copy in
``workspace/backup/``.

``workspace/`` sits next to ``notebooks/`` (both at the top of the repository), so the paths the lessons
use relative to their folder, such as ``../benchmarks/``, lead to the same files from either folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

NOTEBOOKS = Path("notebooks")  # relative to the repository's top folder, where make runs
WORKSPACE = Path("workspace")


def _lessons(notebooks: Path) -> list[Path]:
    if not notebooks.is_dir():
        raise ValueError(f"notebooks must be the course's notebooks folder; {notebooks} is not a folder "
                         "(run this from the top of the repository, as make does)")
    found = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise ValueError(f"notebooks: no lesson (NN_name.ipynb) in {notebooks}")
    return found


def prepare_workspace(notebooks: Path = NOTEBOOKS, workspace: Path = WORKSPACE) -> list[Path]:
    """Copy every lesson of ``notebooks`` that ``workspace`` does not have yet; return the copies made.

    A lesson already in the workspace is left as it is, edits and outputs included.
    Example: ``prepare_workspace()`` on a fresh clone copies the ten notebooks; run again, it copies none.
    """
    notebooks, workspace = Path(notebooks), Path(workspace)
    lessons = _lessons(notebooks)
    workspace.mkdir(parents=True, exist_ok=True)
    copied = []
    for lesson in lessons:
        target = workspace / lesson.name
        if not target.exists():
            shutil.copy2(lesson, target)
            copied.append(target)
    return copied


def fresh_copy(lesson: str, notebooks: Path = NOTEBOOKS, workspace: Path = WORKSPACE) -> Path:
    """Replace the workspace's copy of one lesson by the course's version; the old copy goes to ``backup/``.

    ``lesson``: its number (``"04"`` or ``"4"``) or its file name, with or without ``.ipynb``.
    Returns the fresh copy's path. Example: ``fresh_copy("04")`` -> ``workspace/04_lora_from_scratch.ipynb``.
    """
    notebooks, workspace = Path(notebooks), Path(workspace)
    lessons = _lessons(notebooks)
    if not isinstance(lesson, str) or not lesson.strip():
        raise ValueError(f"lesson must be a lesson number such as '04' or a notebook name, got {lesson!r}")
    key = lesson.strip().removesuffix(".ipynb")
    key = f"{int(key):02d}_" if key.isdigit() else key
    matches = [path for path in lessons if path.stem == key or (key.endswith("_") and path.name.startswith(key))]
    if len(matches) != 1:
        raise ValueError(f"lesson {lesson!r} is none of the lessons: {', '.join(path.stem for path in lessons)}")
    source, target = matches[0], workspace / matches[0].name
    workspace.mkdir(parents=True, exist_ok=True)
    if target.exists():
        backup = workspace / "backup" / f"{target.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        backup.parent.mkdir(exist_ok=True)
        target.replace(backup)
    shutil.copy2(source, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m qlora_lessons.workspace prepare`` or ``... fresh NN``: what ``make course``, ``make fresh`` run."""
    parser = argparse.ArgumentParser(prog="python -m qlora_lessons.workspace",
                                     description="Your copies of the lessons, in workspace/ (git ignores it).")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the course's notebooks (default notebooks)")
    parser.add_argument("--workspace", type=Path, default=WORKSPACE, help="your copies (default workspace)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="copy the lessons that the workspace does not have yet")
    fresh = commands.add_parser("fresh", help="a fresh copy of one lesson (the old one goes to workspace/backup/)")
    fresh.add_argument("lesson", help="the lesson's number, e.g. 04")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "prepare":
            copied = prepare_workspace(args.notebooks, args.workspace)
            print(f"{args.workspace}/: your copies of the lessons; "
                  + (f"copied {len(copied)}: {', '.join(p.name for p in copied)}" if copied else "all already there"))
        else:
            target = fresh_copy(args.lesson, args.notebooks, args.workspace)
            print(f"{target}: a fresh copy of the course's version (an older copy, if any, is in "
                  f"{args.workspace}/backup/)")
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
