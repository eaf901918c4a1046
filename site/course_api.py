"""The API reference of the course website: every public name of ``qlora_lessons``, under the lesson it belongs to.

``api_reference()`` writes MyST markdown with one autodoc entry per name: the names the package's lazy re-export
table ``_MODULES`` lists (which include ``__all__``), then the names README.md's library table offers that live
in a module the package does not re-export (``models.load_model``). The lesson of a module comes from README.md's
library table (``| 04 | `lora`, `lora_layer` | ... |``); a module the table does not name belongs to the lesson
of the longest table module its name starts with (``lora_plots`` -> ``lora`` -> lesson 04). A module neither way
stops the build with what to add to the table.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import qlora_lessons
from qlora_lessons.course import LESSONS

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*(\d\d)\s*\|(.*?)\|(.*)\|\s*$")


@dataclass(frozen=True)
class LibraryRow:
    """One row of README.md's library table: a lesson number, its modules, the names it offers a researcher."""

    lesson: str
    modules: tuple[str, ...]
    offered: tuple[str, ...]


def library_table(readme: str) -> list[LibraryRow]:
    """The rows of the table under README.md's heading "## The library"."""
    section = readme.split("## The library", 1)[-1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows.append(LibraryRow(match[1], tuple(re.findall(r"`(\w+)`", match[2])),
                                   tuple(re.findall(r"`(\w+)`", match[3]))))
    if not rows:
        raise ValueError("README.md has no library table (| lesson | modules | what a researcher can take |)")
    return rows


def lesson_of_module(module: str, rows: list[LibraryRow]) -> str:
    """The lesson number a module belongs to: its row of the table, or that of its longest prefix module."""
    owners = {name: row.lesson for row in rows for name in row.modules}
    prefixes = [name for name in owners if module == name or module.startswith(name + "_")]
    if not prefixes:
        raise ValueError(f"qlora_lessons.{module} belongs to no lesson: add it to the modules column of README.md's "
                         "library table (or name it after a module listed there)")
    return owners[max(prefixes, key=len)]


def public_names(rows: list[LibraryRow]) -> dict[str, list[tuple[str, str]]]:
    """Lesson number -> [(module, name)]: the package's re-exported names, then the table's other offered names."""
    by_lesson: dict[str, list[tuple[str, str]]] = {row.lesson: [] for row in rows}
    exported = qlora_lessons._MODULES
    missing = sorted(set(qlora_lessons.__all__) - {n for names in exported.values() for n in names})
    if missing:
        raise ValueError(f"names in qlora_lessons.__all__ but not in its _MODULES table: {missing}")
    for module, names in exported.items():
        by_lesson[lesson_of_module(module, rows)].extend((module, name) for name in names)
    for row in rows:  # e.g. models.load_model: offered by the table, not re-exported at the top level
        known = {name for _, name in by_lesson[row.lesson]}
        for name in row.offered:
            if name in known:
                continue
            for module in row.modules:
                if module not in exported and _defines(module, name):
                    by_lesson[row.lesson].append((module, name))
                    break
    return by_lesson


def _defines(module: str, name: str) -> bool:
    try:
        obj = getattr(__import__(f"qlora_lessons.{module}", fromlist=[name]), name)
    except (ImportError, AttributeError):
        return False
    return getattr(obj, "__module__", None) == f"qlora_lessons.{module}"


def _directive(module: str, name: str) -> str:
    # Always the defining module: qlora_lessons.memory_calculator is both a module and a function of it.
    target = f"qlora_lessons.{module}.{name}"
    obj = getattr(__import__(f"qlora_lessons.{module}", fromlist=[name]), name)
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n"
    if callable(obj):
        return f".. autofunction:: {target}\n"
    return f".. autodata:: {target}\n   :no-value:\n"


def api_reference() -> str:
    """MyST markdown of the API reference: per lesson, the import line and one autodoc entry per public name."""
    rows = library_table((ROOT / "README.md").read_text(encoding="utf-8"))
    titles = {lesson.notebook[:2]: lesson for lesson in LESSONS}
    parts = []
    for number, entries in public_names(rows).items():
        if not entries:
            continue
        lesson = titles[number]
        modules = sorted({module for module, _ in entries})
        parts.append(f"## Lesson {number} · {lesson.title}\n\n"
                     f"Lesson page: [{lesson.title}](notebooks/{lesson.notebook}). "
                     f"Modules: {', '.join(f'`qlora_lessons.{m}`' for m in modules)}.\n")
        parts.append("```{eval-rst}\n" + "\n".join(_directive(m, n) for m, n in entries) + "```\n")
    return "\n".join(parts)


def _escape(text: str) -> str:
    """reST text showing ``text`` as written: ``literals`` kept, every other markup character escaped."""
    parts = text.split("``")
    return "".join(f"``{part}``" if i % 2 else re.sub(r"([\\`*_|<>\[\]])", r"\\\1", part)
                   for i, part in enumerate(parts))


def docstring_as_written(app, what, name, obj, options, lines: list[str]) -> None:
    """The docstrings are plain text (equations such as |w|, indented continuation lines), not reST: show the
    summary line as a sentence and the rest as it reads in ``help()``, in a text block (autodoc-process-docstring)."""
    if what in ("data", "attribute") and lines and (
            inspect.cleandoc("\n".join(lines)) == inspect.cleandoc(type(obj).__doc__ or "")):
        lines[:] = []  # a constant has no docstring of its own: not the one of tuple or dict
    if not lines:
        return
    summary, body = lines[0], lines[1:]
    while body and not body[0].strip():
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    lines[:] = [_escape(summary)]
    if body:
        lines += ["", ".. code-block:: text", ""] + [f"   {line}" if line.strip() else "" for line in body]


def api_outdated(app, env, added, changed, removed) -> list[str]:
    """Read the API page again when the package's source changed (env-get-outdated): Sphinx does not track it."""
    package = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "qlora_lessons").glob("*.py"))))
    if getattr(env, "course_site_package", None) == package.hexdigest() or "api" not in env.found_docs:
        return []
    env.course_site_package = package.hexdigest()
    return ["api"]
