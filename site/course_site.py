"""Sphinx extension of the course website: the parts of the site that are derived, not written.

Before each build it
- copies ``notebooks/*.ipynb`` into ``site/notebooks/`` (git-ignored), so the lesson pages are the committed,
  executed notebooks (myst-nb renders them as saved) and README.md's links ``notebooks/NN_x.ipynb`` resolve;
- copies ``workshop/*.md`` into ``site/workshop/`` (git-ignored): the instructor's kit as pages;
- writes ``site/_generated/lesson_map.md``, the lesson table, from ``qlora_lessons.course.LESSONS``;
- writes ``site/_generated/api.md``, the API reference (``course_api.py``).
While building it nests a lesson's later level-1 headings under its title, points links to ``.ipynb`` files at
their pages, and copies MathJax into the site when a page has maths; afterwards it writes the slides
(``course_slides.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import posixpath
import re
import shutil
from pathlib import Path

from course_api import api_outdated, api_reference, docstring_as_written
from course_slides import write_slides
from docutils import nodes
from sphinx.transforms import SphinxTransform

from qlora_lessons.course import LESSONS

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent
GENERATED = SITE / "_generated"


def lesson_map() -> str:
    """The lesson table of the home page, from LESSONS: number, title (linked to its page), what you learn."""
    lines = ["| # | lesson | you will learn |", "|---|---|---|"]
    for lesson in LESSONS:
        lines.append(f"| {lesson.notebook[:2]} | [{lesson.title}](notebooks/{lesson.notebook}) | "
                     f"{lesson.you_learn} |")
    return "\n".join(lines) + "\n"


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
    kit = SITE / "workshop"  # the instructor's kit (workshop/*.md) as pages, so README's links to it resolve
    kit.mkdir(exist_ok=True)
    for page in sorted((ROOT / "workshop").glob("*.md")):
        _write_if_changed(kit / page.name, page.read_text(encoding="utf-8"))
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


def setup(app):
    # The text of these extensions as a config value: Sphinx rebuilds every page when it changes (an incremental
    # build would otherwise keep pages made by the old code).
    app.add_config_value("course_site_source", "", "env")
    app.connect("config-inited", lambda app, config: setattr(config, "course_site_source", hashlib.sha256(
        b"".join(path.read_bytes() for path in sorted(SITE.glob("course_*.py")))).hexdigest()))
    app.config.mathjax_path = MATHJAX
    app.connect("html-page-context", note_maths)
    app.connect("build-finished", copy_mathjax)
    app.connect("build-finished", write_slides)
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", docstring_as_written)
    app.connect("env-get-outdated", api_outdated)
    app.connect("doctree-resolved", link_notebooks)
    app.add_transform(OneTitlePerLesson)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
