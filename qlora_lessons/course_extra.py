"""The course extra: matplotlib and ipywidgets, imported when a figure or a widget is asked for.

``pip install qlora-lessons`` installs the library (torch, transformers, peft, bitsandbytes, numpy, tqdm);
``pip install qlora-lessons[course]`` adds what the notebooks need to draw and to turn knobs:
matplotlib, ipywidgets and JupyterLab. So that the library imports and runs without them, no module
imports them at its top: a function that draws calls ``course_import("matplotlib.pyplot")`` when it
runs, and a learner without the extra reads how to install it instead of a bare ``ModuleNotFoundError``.

Example: ``plt = course_import("matplotlib.pyplot")``; without matplotlib: ``ImportError: ... needs
matplotlib, which comes with the course extra: pip install qlora-lessons[course]``.

Left out: version checks (pyproject.toml's floors and constraints.txt hold those).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# the extra's importable names (IPython comes with matplotlib's and ipywidgets' notebook side)
COURSE_PACKAGES = ("matplotlib", "ipywidgets", "IPython", "jupyterlab")
INSTALL_HINT = "pip install qlora-lessons[course] (in zsh: pip install 'qlora-lessons[course]'), or make course"


def course_import(name: str) -> ModuleType:
    """Import module ``name`` of the course extra (``"matplotlib.pyplot"``, ``"ipywidgets"``, ...) and return it.

    A missing package of the extra is an ``ImportError`` that says how to install it; any other failure
    (a broken install, a missing module of another package) is raised as it is.
    """
    if not isinstance(name, str) or name.split(".")[0] not in COURSE_PACKAGES:
        raise ValueError(f"name must be a module of {COURSE_PACKAGES}, got {name!r}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in COURSE_PACKAGES:
            raise
        raise ImportError(f"this figure or widget needs {missing}, which comes with the course extra: "
                          f"{INSTALL_HINT}", name=error.name) from error
