"""qlora_lessons.workspace: learners work in copies that course updates never touch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_lessons.course import LESSONS
from qlora_lessons.workspace import NOTEBOOKS, WORKSPACE, fresh_copy, main, prepare_workspace

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_copies_the_lessons_once_and_keeps_the_learners_edits(tmp_path):
    workspace = tmp_path / "workspace"
    copied = prepare_workspace(ROOT / "notebooks", workspace)
    assert sorted(p.name for p in copied) == sorted(lesson.notebook for lesson in LESSONS)
    edited = workspace / LESSONS[4].notebook
    edited.write_text("my answers")
    (workspace / LESSONS[5].notebook).unlink()  # a lesson the workspace does not have yet (say, new in an update)
    assert [p.name for p in prepare_workspace(ROOT / "notebooks", workspace)] == [LESSONS[5].notebook]
    assert edited.read_text() == "my answers"


def test_fresh_copy_replaces_one_lesson_and_keeps_the_old_copy(tmp_path):
    workspace = tmp_path / "workspace"
    prepare_workspace(ROOT / "notebooks", workspace)
    lesson = workspace / "04_lora_from_scratch.ipynb"
    lesson.write_text("my answers")
    assert fresh_copy("04", ROOT / "notebooks", workspace) == lesson
    assert lesson.read_bytes() == (ROOT / "notebooks" / lesson.name).read_bytes()
    assert [p.read_text() for p in (workspace / "backup").glob("04_lora_from_scratch.*.ipynb")] == ["my answers"]
    assert fresh_copy("4", ROOT / "notebooks", workspace) == fresh_copy("04_lora_from_scratch.ipynb",
                                                                        ROOT / "notebooks", workspace)
    with pytest.raises(ValueError, match="lesson '42' is none of the lessons"):
        fresh_copy("42", ROOT / "notebooks", workspace)
    with pytest.raises(ValueError, match="notebooks"):
        fresh_copy("04", tmp_path / "nowhere", workspace)


def test_the_command_line_prints_what_it_did(tmp_path, capsys):
    args = ["--notebooks", str(ROOT / "notebooks"), "--workspace", str(tmp_path / "w")]
    main([*args, "prepare"])
    assert f"copied {len(LESSONS)}" in capsys.readouterr().out
    main([*args, "prepare"])
    assert "all already there" in capsys.readouterr().out
    main([*args, "fresh", "02"])
    assert "02_memory_maths.ipynb: a fresh copy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "fresh", "99"])
    assert exit_info.value.code == 2


def test_make_course_opens_the_workspace_which_git_ignores():
    makefile = (ROOT / "Makefile").read_text()
    course = makefile[makefile.index("\ncourse:"):].split("\n\n")[0]
    assert "qlora_lessons.workspace prepare" in course and "jupyter lab" in course
    assert re.search(r"jupyter lab .*\bworkspace/00_start_here\.ipynb", course)
    assert "qlora_lessons.workspace fresh $(LESSON)" in makefile
    ignored = subprocess.run(["git", "check-ignore", "-q", "workspace/00_start_here.ipynb"], cwd=ROOT)
    assert ignored.returncode == 0, "git must ignore workspace/"
    assert "## Your workspace" in (ROOT / "README.md").read_text()


def test_the_lessons_relative_paths_work_from_the_workspace():
    """The workspace is a sibling of notebooks/, so a path a lesson opens relative to its folder ("../x")
    names the same file from either; every such path in the lessons exists."""
    assert (ROOT / WORKSPACE).parent == (ROOT / NOTEBOOKS).parent == ROOT
    for lesson in LESSONS:
        cells = json.loads((ROOT / "notebooks" / lesson.notebook).read_text())["cells"]
        code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
        for relative in re.findall(r"""["'](\.\./[^"']+)["']""", code):
            assert (ROOT / WORKSPACE / relative).resolve().exists(), f"{lesson.notebook}: {relative}"


def test_python_m_runs_the_workspace_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "qlora_lessons.workspace", "--notebooks", str(ROOT / "notebooks"),
                             "--workspace", str(tmp_path / "w"), "prepare"], capture_output=True, text=True)
    assert result.returncode == 0 and "copied" in result.stdout, result.stderr
