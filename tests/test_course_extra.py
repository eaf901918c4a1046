"""Without the course extra (matplotlib, ipywidgets) the library works, and a figure or a widget says how to get it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qlora_lessons
from qlora_lessons.course_extra import COURSE_PACKAGES, course_import

PACKAGE = Path(qlora_lessons.__file__).parent


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def test_no_module_imports_the_course_extra_but_through_course_import():
    """Every import of matplotlib, ipywidgets or IPython goes through ``course_import`` (type hints excepted)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "course_extra.py":
            continue
        hidden = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if _is_type_checking_block(node):
                hidden |= {id(inner) for inner in ast.walk(node)}
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if id(node) not in hidden and any(name.split(".")[0] in COURSE_PACKAGES for name in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, f"import these with course_import(...): {offenders}"


def _uninstall(monkeypatch, package: str) -> None:
    """Make ``package`` and its modules fail to import, as if it were not installed (even if a test imported it)."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ModuleNotFoundError


def test_a_figure_without_matplotlib_says_how_to_install_it(monkeypatch):
    _uninstall(monkeypatch, "matplotlib")
    with pytest.raises(ImportError, match=r"needs matplotlib.*pip install qlora-lessons\[course\]"):
        qlora_lessons.plot_spectrum(torch.eye(4))


def test_a_widget_without_ipywidgets_says_how_to_install_it(monkeypatch):
    _uninstall(monkeypatch, "ipywidgets")
    with pytest.raises(ImportError, match=r"needs ipywidgets.*pip install qlora-lessons\[course\]"):
        qlora_lessons.lora_calculator(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_other_failures_pass_through_and_only_the_extra_is_imported():
    """A package the extra depends on, missing (Pillow here), is raised as it is: the extra is not the fix."""
    code = ("import sys; sys.modules['PIL'] = None\n"
            "from qlora_lessons.course_extra import course_import\n"
            "try:\n    course_import('matplotlib.pyplot')\n"
            "except ImportError as error:\n    print(type(error).__name__, error.name, 'course extra' in str(error))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["ModuleNotFoundError", "PIL", "False"], result.stderr[-2000:]
    with pytest.raises(ValueError, match="name must be a module of"):
        course_import("torch")
    assert course_import("ipywidgets").__name__ == "ipywidgets"
