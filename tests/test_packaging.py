"""The package's declared dependencies, the conda environment and the course's table of contents agree."""

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from qlora_lessons.course import LESSONS

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower()


def test_environment_yml_installs_the_same_set_as_pyproject():
    project = _pyproject()["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_lists) == 1, "environment.yml should have one pip: section"
    assert set(pip_lists[0]) == declared, (
        f"only in pyproject.toml: {sorted(declared - set(pip_lists[0]))}; "
        f"only in environment.yml: {sorted(set(pip_lists[0]) - declared)}"
    )


def test_required_dependencies_are_declared():
    project = _pyproject()["project"]
    names = {_requirement_name(spec) for spec in project["dependencies"]}
    assert {"torch", "transformers", "peft", "bitsandbytes", "numpy", "matplotlib", "ipywidgets",
            "jupyterlab", "tqdm"} <= names
    dev = {_requirement_name(spec) for spec in project["optional-dependencies"]["dev"]}
    assert {"pytest", "nbval", "hypothesis", "ruff"} <= dev
    assert project["name"] == "qlora-lessons" and project["requires-python"] == ">=3.10"


def test_every_lesson_has_its_notebook_and_every_notebook_its_lesson():
    on_disk = sorted(path.name for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert on_disk == [lesson.notebook for lesson in LESSONS]


def test_readme_lists_every_lesson_with_a_colab_badge():
    readme = (ROOT / "README.md").read_text()
    for lesson in LESSONS:
        assert f"notebooks/{lesson.notebook}" in readme, f"README.md does not link {lesson.notebook}"
        assert re.search(rf"colab\.research\.google\.com/github/\S+/notebooks/{re.escape(lesson.notebook)}", readme), (
            f"README.md has no Colab badge for {lesson.notebook}")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make course" in readme
    assert "make test" in ci
