"""Sphinx extension of the course website: the parts of the site that are derived, not written.

Before each build it
- copies ``notebooks/*.ipynb`` into ``site/notebooks/`` (git-ignored), so the lesson pages are the committed,
  executed notebooks (myst-nb renders them as saved) and README.md's links ``notebooks/NN_x.ipynb`` resolve;
- writes ``site/_generated/lesson_map.md``, the lesson table, from ``qlora_lessons.course.LESSONS``;
- writes ``site/_generated/api.md``, the API reference: every public name of ``qlora_lessons`` (the names its
  lazy re-export table ``_MODULES`` lists, which include ``__all__``) and the names README.md's library table
  offers, grouped by the lesson they belong to, each rendered by autodoc from its signature and docstring.

The lesson of a module comes from README.md's library table (``| 04 | `lora`, `lora_layer` | ... |``); a module
the table does not name belongs to the lesson of the longest table module its name starts with
(``lora_plots`` -> ``lora`` -> lesson 04). A module neither way stops the build with what to add to the table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes
from sphinx.transforms import SphinxTransform

import qlora_lessons
from qlora_lessons.course import LESSONS

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent
GENERATED = SITE / "_generated"
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


def lesson_map() -> str:
    """The lesson table of the home page, from LESSONS: number, title (linked to its page), what you learn."""
    lines = ["| # | lesson | you will learn |", "|---|---|---|"]
    for lesson in LESSONS:
        lines.append(f"| {lesson.notebook[:2]} | [{lesson.title}](notebooks/{lesson.notebook}) | "
                     f"{lesson.you_learn} |")
    return "\n".join(lines) + "\n"


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


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def generate(app=None) -> None:
    """Copy the notebooks in and write the generated pages (Sphinx's builder-inited event)."""
    copies = SITE / "notebooks"
    copies.mkdir(exist_ok=True)
    wanted = {lesson.notebook for lesson in LESSONS}
    for stale in copies.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name in sorted(wanted):
        source, copy = ROOT / "notebooks" / name, copies / name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copy2(source, copy)
    GENERATED.mkdir(exist_ok=True)
    _write_if_changed(GENERATED / "lesson_map.md", lesson_map())
    _write_if_changed(GENERATED / "api.md", api_reference())


MATHJAX = "mathjax/tex-chtml.js"  # MathJax 3's TeX-to-HTML component, as shipped by PyPI's sphinx-mathjax-offline
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")  # what it loads: ~2 MB


_PAGES_WITH_MATHS: set[str] = set()


def note_maths(app, pagename, templatename, context, doctree) -> None:
    """Remember the pages whose maths MathJax typesets (html-page-context)."""
    if context.get("has_maths_elements"):
        _PAGES_WITH_MATHS.add(pagename)


def copy_mathjax(app, exception) -> None:
    """Put MathJax into _static/ when a page has maths, so no page loads it from a CDN (build-finished)."""
    if exception is not None or app.builder.format != "html":
        return
    if not _PAGES_WITH_MATHS:
        return
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    source = Path(spec.origin).parent / "static" / "mathjax"
    for part in MATHJAX_PARTS:
        target = Path(app.outdir) / "_static" / "mathjax" / part
        if (source / part).is_dir():
            shutil.copytree(source / part, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target)


class OneTitlePerLesson(SphinxTransform):
    """Nest a lesson's later level-1 headings ("# Part A") under its title, so the navigation lists the lesson
    once; on the page they read as before."""

    default_priority = 500  # before DoctreeReadEvent (880), which collects the table of contents

    def apply(self, **kwargs) -> None:
        if not self.env.docname.startswith("notebooks/"):
            return
        top = [node for node in self.document.children if isinstance(node, nodes.section)]
        for section in top[1:]:
            self.document.remove(section)
            top[0].append(section)


def link_notebooks(app, doctree, docname: str) -> None:
    """Point links to a lesson's .ipynb at its page (doctree-resolved). Markdown the notebooks print (lesson 00's
    lesson table is an output) is rendered without MyST's link resolution, so its ``NN_x.ipynb`` links stay."""
    for node in doctree.findall(nodes.reference):
        path, _, fragment = node.get("refuri", "").partition("#")
        if not path.endswith(".ipynb") or re.match(r"^[a-z][a-z0-9+.-]*:|^/", path, re.IGNORECASE):
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(docname), path.removesuffix(".ipynb")))
        if target in app.env.found_docs:
            node["refuri"] = app.builder.get_relative_uri(docname, target) + (f"#{fragment}" if fragment else "")


def api_outdated(app, env, added, changed, removed) -> list[str]:
    """Read the API page again when the package's source changed (env-get-outdated): Sphinx does not track it."""
    package = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "qlora_lessons").glob("*.py"))))
    if getattr(env, "course_site_package", None) == package.hexdigest() or "api" not in env.found_docs:
        return []
    env.course_site_package = package.hexdigest()
    return ["api"]


def setup(app):
    # This file's text as a config value: Sphinx rebuilds every page when it changes (an incremental build
    # would otherwise keep pages made by the old code).
    app.add_config_value("course_site_source", "", "env")
    app.connect("config-inited", lambda app, config: setattr(
        config, "course_site_source", hashlib.sha256(Path(__file__).read_bytes()).hexdigest()))
    app.config.mathjax_path = MATHJAX
    app.connect("html-page-context", note_maths)
    app.connect("build-finished", copy_mathjax)
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", docstring_as_written)
    app.connect("env-get-outdated", api_outdated)
    app.connect("doctree-resolved", link_notebooks)
    app.add_transform(OneTitlePerLesson)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
