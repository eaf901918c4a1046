"""The package's declared dependencies, the conda environment and the course's table of contents agree."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
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


def _declared() -> list[str]:
    """Every requirement of pyproject.toml: the library's, the course extra's and the dev extra's, with the dev
    extra's reference to the course extra (``qlora-lessons[course]``) left out: its packages are already listed."""
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    return [spec for spec in project["dependencies"] + extras["course"] + extras["dev"]
            if _requirement_name(spec) != project["name"]]


def test_environment_yml_installs_the_same_set_as_pyproject():
    declared = set(_declared())
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_lists) == 1, "environment.yml should have one pip: section"
    assert set(pip_lists[0]) == declared, (
        f"only in pyproject.toml: {sorted(declared - set(pip_lists[0]))}; "
        f"only in environment.yml: {sorted(set(pip_lists[0]) - declared)}"
    )


def test_the_library_needs_no_notebook_packages_and_the_extras_add_them():
    """``pip install qlora-lessons``: the library; ``[course]``: the notebooks; ``[dev]``: the course and the tests."""
    project = _pyproject()["project"]
    names = {_requirement_name(spec) for spec in project["dependencies"]}
    assert names == {"torch", "transformers", "peft", "bitsandbytes", "numpy", "tqdm"}
    extras = project["optional-dependencies"]
    assert {_requirement_name(spec) for spec in extras["course"]} == {"matplotlib", "ipywidgets", "jupyterlab"}
    dev = {_requirement_name(spec) for spec in extras["dev"]}
    assert "qlora-lessons[course]" in extras["dev"], "make install (the dev extra) must keep the notebooks working"
    assert {"pytest", "nbval", "hypothesis", "ruff", "mypy"} <= dev
    assert project["name"] == "qlora-lessons" and project["requires-python"] == ">=3.10"
    for target, extra in (("course", "course"), ("install", "dev")):  # what make would run in a new environment
        plan = subprocess.run(["make", "-n", target, "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        assert f'-e ".[{extra}]"' in plan, f"make {target} should install the {extra} extra:\n{plan}"


def test_licence_is_an_spdx_expression():
    """The SPDX form (setuptools >= 77) builds without the deprecation warnings of a table and a classifier."""
    config = _pyproject()
    assert config["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in config["project"]["classifiers"])
    assert "setuptools>=77" in " ".join(config["build-system"]["requires"])


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
    extras = project["optional-dependencies"]  # course, dev, and site: `make test` and `make site` install it too
    todo = [Requirement(spec) for spec in project["dependencies"] + [s for specs in extras.values() for s in specs]
            if _requirement_name(spec) != project["name"]]
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


def test_the_wheel_installs_without_the_repository_and_loads_the_course_model_offline(tmp_path):
    """Build the wheel, install it into a fresh virtual environment, and load the course model from there, offline,
    with the repository neither the working directory nor on ``sys.path``.

    To keep this fast, the fresh environment reaches the installed dependencies (torch, transformers, ...)
    through a ``.pth`` file naming this environment's site-packages: a plain path line is added to ``sys.path``,
    but the ``.pth`` files in that folder (the editable install of this checkout) are not processed, so the only
    ``qlora_lessons`` it can import is the wheel's (checked by its ``__file__``).
    """
    source = tmp_path / "source"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "qlora_lessons", source / "qlora_lessons",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    quiet = {"capture_output": True, "text": True, "timeout": 300}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], **quiet)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("qlora_lessons-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
        metadata = archive.read(next(name for name in files if name.endswith(".dist-info/METADATA"))).decode()
    weights = "qlora_lessons/course_model/weights/"
    assert {"qlora_lessons/py.typed", "qlora_lessons/lora_sweeps.json", "qlora_lessons/course_model/data/world.json",
            weights + "model.safetensors", weights + "config.json", weights + "tokenizer.json"} <= files
    assert not any(name.startswith(("tests/", "notebooks/")) for name in files)
    assert "License-Expression: MIT" in metadata and "Provides-Extra: course" in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **quiet)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", str(wheel)], **quiet)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, **quiet).stdout.strip()
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    code = ("import qlora_lessons, torch\n"
            "from qlora_lessons import load_model, load_task\n"
            "model, tokenizer = load_model(device='cpu')\n"
            "example = load_task('test')[0]\n"
            "ids = tokenizer(example.prompt, return_tensors='pt').input_ids\n"
            "with torch.no_grad():\n"
            "    logits = model(ids).logits\n"
            "print(qlora_lessons.__file__)\n"
            "print(sum(p.numel() for p in model.parameters()), tuple(logits.shape))\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([str(python), "-I", "-c", code], cwd=tmp_path, env=environment, **quiet)
    assert run.returncode == 0, run.stderr[-3000:]
    location, counts = run.stdout.splitlines()[-2:]
    assert Path(location).resolve().is_relative_to(Path(site_packages).resolve()), location
    assert not Path(location).resolve().is_relative_to(ROOT)
    n_parameters, shape = counts.split(" ", 1)
    from qlora_lessons.models import load_model

    model, tokenizer = load_model(device="cpu")
    assert int(n_parameters) == sum(p.numel() for p in model.parameters())
    assert shape.endswith(f", {model.config.vocab_size})")
