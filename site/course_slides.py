"""Slides for the room, made from the lessons at every site build: ``slides.html`` beside the site's pages.

For each lesson, in order: its opening (every markdown cell before its first code cell: the title, what the
lesson is about, what you will learn) and its recap (the cell headed ``## Recap``, up to its next heading), one
slide per cell, each linking to the lesson's page. The slides are the notebooks' own text, so they cannot drift
from them. A plain HTML page: one slide per screen (CSS scroll snapping: Page Down, the arrow keys or the space
bar go to the next), one slide per sheet when printed, nothing loaded from anywhere (it reads offline like the
rest of the site).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

from qlora_lessons.course import LESSONS

ROOT = Path(__file__).resolve().parents[1]
STYLE = """
html { scroll-snap-type: y mandatory; }
body { margin: 0; font-family: system-ui, sans-serif; line-height: 1.45; color: #1a1a1a; background: #fff; }
section.slide { min-height: 100vh; box-sizing: border-box; padding: 6vh 9vw 8vh; scroll-snap-align: start;
  display: flex; flex-direction: column; justify-content: center; font-size: clamp(15px, 1.6vw, 28px);
  border-bottom: 1px solid #ddd; }
section.slide h1 { font-size: 2em; margin: 0 0 0.5em; }
section.slide h2 { font-size: 1.5em; margin: 0 0 0.5em; }
section.slide code { font-size: 0.9em; background: #f2f2f2; padding: 0 0.2em; border-radius: 3px; }
section.slide table { border-collapse: collapse; } section.slide td, section.slide th { padding: 0.2em 0.6em; }
p.where { margin-top: auto; color: #666; font-size: 0.7em; }
@media print { html { scroll-snap-type: none; } section.slide { min-height: 0; page-break-after: always;
  border: 0; } }
"""


@dataclass(frozen=True)
class Slide:
    """One slide: the lesson it comes from, which part (opening or recap) and the cell's markdown."""

    notebook: str
    part: str
    markdown: str


def lesson_slides(notebook: Path) -> list[Slide]:
    """The opening cells (markdown before the first code cell) and the recap cell of one lesson."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    slides = []
    for cell in cells:
        if cell["cell_type"] == "code":
            break
        if cell["cell_type"] == "markdown":
            slides.append(Slide(notebook.name, "opening", "".join(cell["source"])))
    slides += [Slide(notebook.name, "recap", _first_section("".join(cell["source"]))) for cell in cells
               if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith("## Recap")]
    return slides


def _first_section(markdown: str) -> str:
    """The cell up to its second heading (a recap cell may go on with "## Exercises")."""
    return re.split(r"\n(?=#{1,6} )", markdown, maxsplit=1)[0]


def _link_lessons(text: str) -> str:
    """Links between notebooks (``05_nf4_by_hand.ipynb#blocks``) pointed at the lesson pages."""
    return re.sub(r'href="(\d\d_\w+)\.ipynb', r'href="notebooks/\1.html', text)


def slides_html() -> str:
    """The whole deck: a title slide, then each lesson's opening and recap."""
    render = MarkdownIt("commonmark").enable("table").render
    sections = ['<section class="slide"><h1>qlora-lessons</h1><p>Fine-tuning large language models on small '
                'hardware: the openings and recaps of the lessons.</p><p class="where">'
                '<a href="index.html">the course website</a></p></section>']
    for lesson in LESSONS:
        page = f"notebooks/{lesson.notebook.removesuffix('.ipynb')}.html"
        for slide in lesson_slides(ROOT / "notebooks" / lesson.notebook):
            body = _link_lessons(render(slide.markdown))
            sections.append(f'<section class="slide {slide.part}" data-lesson="{lesson.notebook[:2]}">{body}'
                            f'<p class="where">{html.escape(lesson.title)}, {slide.part}: '
                            f'<a href="{page}">the lesson</a></p></section>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            'content="width=device-width, initial-scale=1"><title>qlora-lessons: slides</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_slides(app, exception) -> None:
    """Write slides.html into the built site (build-finished)."""
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / "slides.html").write_text(slides_html(), encoding="utf-8")
