"""The package's top level re-exports every public name it lists (and the README offers), and importing it prints
nothing and loads neither torch nor the figure and widget libraries."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import qlora_lessons


def test_every_listed_name_is_exported_once():
    assert len(qlora_lessons.__all__) == len(set(qlora_lessons.__all__))
    missing = [name for name in qlora_lessons.__all__ if not hasattr(qlora_lessons, name)]
    assert not missing


def test_import_is_silent():
    result = subprocess.run([sys.executable, "-c", "import qlora_lessons"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr[-2000:]


def test_every_name_the_readme_offers_imports_from_the_package():
    """The README's library table: each module it names exists, and each name it offers (outside parentheses,
    which name other libraries' classes) is in ``__all__`` and imports from ``qlora_lessons``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = readme.split("## The library", 1)[1].split("\n\n")
    table = next(block for block in blocks if block.startswith("| lesson | modules |"))
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert len(rows) >= 9, "the library table should have a row per lesson"
    names, modules = set(), set()
    for _lesson, module_cell, names_cell in rows:
        modules |= set(re.findall(r"`(\w+)`", module_cell))
        names |= set(re.findall(r"`([A-Za-z_]\w*)`", re.sub(r"\([^()]*\)", "", names_cell)))
    for module in modules:
        importlib.import_module(f"qlora_lessons.{module}")
    assert {"load_model", "load_task", "exact_match", "finetune", "estimate_training_memory"} <= names
    assert names <= set(qlora_lessons.__all__), f"not in __all__: {sorted(names - set(qlora_lessons.__all__))}"
    namespace: dict = {}
    exec(f"from qlora_lessons import {', '.join(sorted(names))}", namespace)  # the import a reader writes
    assert all(callable(namespace[name]) for name in names)


def test_every_lazy_name_is_listed_in_all():
    assert set(qlora_lessons._WHERE) == set(qlora_lessons.__all__)


def test_importing_the_package_and_every_module_loads_no_figure_or_widget_library():
    """matplotlib and ipywidgets (the course extra) load when a figure or a widget is drawn, not on import."""
    code = (
        "import importlib, pkgutil, sys, qlora_lessons\n"
        "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'IPython', 'torch') if m in sys.modules))\n"
        "for info in pkgutil.walk_packages(qlora_lessons.__path__, 'qlora_lessons.'):\n"
        "    if not info.name.endswith('__main__'):  # python -m qlora_lessons, which prints the report\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'IPython') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    after_package, after_modules = result.stdout.splitlines()
    assert after_package == "[]", f"import qlora_lessons loaded {after_package}"
    assert after_modules == "[]", f"importing every module loaded {after_modules}"


def test_type_checkers_see_every_lazy_name_with_its_module():
    """mypy and pyright do not run ``__getattr__``: the ``if TYPE_CHECKING:`` imports must name the same modules."""
    import ast

    tree = ast.parse(Path(qlora_lessons.__file__).read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name: node.module.removeprefix("qlora_lessons.") for node in block.body for alias in node.names
            if node.module.startswith("qlora_lessons.")}
    assert seen == qlora_lessons._WHERE
