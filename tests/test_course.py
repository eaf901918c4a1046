"""qlora_lessons.course: the one table of lessons that the README and the start-here notebook both show."""

import json
from pathlib import Path

from qlora_lessons.course import LESSONS

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_says_what_each_lesson_teaches_as_course_py_does():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    for lesson in LESSONS:
        row = next((r for r in rows if f"(notebooks/{lesson.notebook})" in r), None)
        assert row is not None, f"README.md has no table row for {lesson.notebook}"
        assert f"| [{lesson.title}](notebooks/{lesson.notebook}) | {lesson.you_learn} |" in row, (
            f"README.md's row for {lesson.notebook} differs from qlora_lessons/course.py; copy it from there:\n"
            f"{row}\n{lesson.you_learn}")


def test_the_start_here_notebook_shows_the_table_of_course_py():
    notebook = json.loads((ROOT / "notebooks" / LESSONS[0].notebook).read_text())
    shown = "".join("".join(output.get("data", {}).get("text/markdown", ""))
                    for cell in notebook["cells"] if cell["cell_type"] == "code" for output in cell.get("outputs", []))
    for lesson in LESSONS[1:]:
        assert f"| [{lesson.title}]({lesson.notebook}) | {lesson.you_learn} |" in shown, (
            f"notebooks/{LESSONS[0].notebook} does not show course.py's line for {lesson.notebook}: execute it again")
