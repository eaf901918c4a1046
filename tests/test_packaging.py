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


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            spec = line.split(";")[0].strip()
            name, version = spec.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_the_whole_dependency_set():
    """Every package the course needs, directly or through another package, has an exact pin."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins, project = _pins(), _pyproject()["project"]
    extras = project["optional-dependencies"]  # dev, and site: `make test` and `make site` install it too
    todo = [Requirement(spec) for spec in project["dependencies"] + [s for specs in extras.values() for s in specs]]
    needed: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if (requirement.marker and not requirement.marker.evaluate({"extra": ""})) or name in needed:
            continue
        needed.add(name)
        for spec in metadata.requires(requirement.name) or []:
            todo.append(Requirement(spec))
    assert needed - set(pins) == set(), f"not pinned in constraints.txt: {sorted(needed - set(pins))}"
    assert pins["torch"] == "2.13.0" and "+" not in "".join(pins.values())


def test_installs_use_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "-c $(CONSTRAINTS)" in makefile
    assert "constraints.txt" in (ROOT / "README.md").read_text()
    assert "make test-portable" in (ROOT / ".ci" / "run").read_text()
