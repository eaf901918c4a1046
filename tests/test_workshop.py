"""The workshop kit: learner notebooks show no worked solution; workshop/ is what tools/workshop_times.py renders."""

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import workshop_times  # noqa: E402

LESSONS = sorted((ROOT / "notebooks").glob("0[0-8]_*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_learner_notebook_shows_no_worked_solution(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"show_solution\(\s*lesson\d\d\.solution", code), (
            f"cell {index} prints a worked solution; leave the call commented out for the learner to run")
        assert not re.search(r"check_\w+\(\s*lesson\d\d\.solution", code), (
            f"cell {index} runs a worked solution; tests/test_exercises_{path.stem[:2]}... checks solutions")
        printed = "".join(o.get("text", "") for o in cell.get("outputs", []))
        assert "def solution_" not in printed, f"cell {index}'s saved output shows a worked solution"


def test_every_check_of_a_lesson_is_run_by_its_test_module():
    import importlib

    for path in LESSONS:
        number = path.stem[:2]
        module = importlib.import_module(f"qlora_lessons.exercises.lesson{number}")
        tests = (ROOT / "tests" / f"test_exercises_lesson{number}.py").read_text()
        checks = [name for name in dir(module) if name.startswith("check_")]
        assert checks and all(f"lesson{number}.{name}" in tests for name in checks), number


def test_sections_and_markers_are_read_from_a_notebook_and_a_plan(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 42 · A lesson"),
        nbformat.v4.new_code_cell("x = 1", metadata={"execution": {
            "iopub.status.busy": "2026-01-01T00:00:00.000000Z", "shell.execute_reply": "2026-01-01T00:00:01.500000Z"}}),
        nbformat.v4.new_markdown_cell("## 1. First\n\ntext"),
        nbformat.v4.new_code_cell("lesson42.check_thing(answer)", metadata={"execution": {
            "iopub.status.busy": "2026-01-01T00:00:02Z", "shell.execute_reply": "2026-01-01T00:00:04.25Z"}}),
        nbformat.v4.new_markdown_cell("## Recap\n\n## Exercises"),
    ])
    sections = workshop_times.sections(nb)
    assert [(s["heading"], s["seconds"], s["exercises"]) for s in sections] == [
        ("(opening)", 1.5, 0), ("1. First", 2.2, 1), ("Recap + Exercises", 0.0, 0)]  # 2.25 s rounds to 2.2
    times = {"lessons": [{"notebook": "42_a.ipynb", "seconds": 100.0, "sections": sections}]}
    plan = "a <!--t:42-->?<!--/t--> b <!--t:42:1+42:Recap-->?<!--/t-->"
    assert workshop_times.fill(plan, times) == "a <!--t:42-->1.7 min<!--/t--> b <!--t:42:1+42:Recap-->2 s<!--/t-->"
    with pytest.raises(ValueError, match="no lesson '43'"):
        workshop_times.fill("<!--t:43-->x<!--/t-->", times)


def test_the_committed_table_and_plans_are_rendered_from_times_json(tmp_path):
    times = json.loads((ROOT / "workshop" / "times.json").read_text())
    assert [e["notebook"] for e in times["lessons"]] == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    copy = tmp_path / "workshop"
    shutil.copytree(ROOT / "workshop", copy)
    assert workshop_times.render(times, copy) == [], "run `python tools/workshop_times.py render` and commit"
