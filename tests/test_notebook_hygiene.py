"""Every committed notebook is executed, error-free, clean and on the python3 kernel.

Readers on GitHub see the committed outputs, so they must be there; execution noise (timings,
widget state, machine paths) must not. `python tools/notebooks.py execute` produces such files.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ALLOWED_NOTEBOOK_METADATA = {"kernelspec", "language_info"}
ALLOWED_CELL_METADATA = {"tags"}
# Absolute paths of someone's machine: home folders, temporary folders, site-packages, Windows drives.
MACHINE_PATH = re.compile(r"(/home/\w|/Users/\w|/root/|/work/|/tmp/|/private/var/|site-packages|[A-Z]:\\\\)")


def _text_of(output: dict) -> str:
    parts = [output.get("text", "")]
    parts += [value for key, value in output.get("data", {}).items() if key.startswith("text/")]
    parts += output.get("traceback", [])
    return "".join("".join(part) if isinstance(part, list) else str(part) for part in parts)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert set(nb["metadata"]) <= ALLOWED_NOTEBOOK_METADATA, f"notebook metadata: {sorted(nb['metadata'])}"
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code, "a lesson without code cells"
    assert all(cell.get("outputs") is not None for cell in code)
    assert sum(bool(cell["outputs"]) for cell in code) >= len(code) // 3, "committed without most outputs"
    counts = [cell["execution_count"] for cell in code]
    assert counts == list(range(1, len(code) + 1)), "not executed top to bottom in one fresh kernel"
    for index, cell in enumerate(nb["cells"]):
        assert set(cell.get("metadata", {})) <= ALLOWED_CELL_METADATA, f"cell {index}: {cell['metadata']}"
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"cell {index} has an error output"
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), (
                f"cell {index} keeps widget state")
            found = MACHINE_PATH.search(_text_of(output))
            assert not found, f"cell {index} output shows a machine path near {found.group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_as_jupyterlab_saves_it(path):
    """nbformat 4.5 with a unique id per cell: JupyterLab opens the file without upgrading it, so a learner's tab
    is not marked unsaved and autosave does not rewrite a tracked file. Checked outputs are marked by the cell
    tag nbval reads, not by a comment line in the code a learner reads."""
    nb = json.loads(path.read_text())
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5), (nb["nbformat"], nb["nbformat_minor"])
    ids = [cell.get("id") for cell in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs its own id"
    for index, cell in enumerate(nb["cells"]):
        assert "NBVAL_" not in "".join(cell["source"]), f"cell {index}: use the nbval-check-output tag instead"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_images_are_small(path):
    size = path.stat().st_size
    assert size < 1_500_000, f"{path.name} is {size / 1e6:.1f} MB; keep figures small (env.FIGURE_STYLE)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercise_cells_show_no_bare_true_or_false(path):
    """A check's True/False is for asserts; in an exercise cell Jupyter would print it under the check's own
    line (end the cell with `;`)."""
    nb = json.loads(path.read_text())
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and ".check_" in "".join(cell["source"]):
            shown = [output["data"].get("text/plain") for output in cell.get("outputs", [])
                     if output["output_type"] == "execute_result"]
            assert not any(text in (["False"], ["True"], "False", "True") for text in shown), (
                f"cell {index} shows a bare {shown}: end it with ';'")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_assert_names_its_claim(path):
    """A learner who changed a parameter and broke a claim reads which claim, not a bare AssertionError."""
    import ast

    nb = json.loads(path.read_text())
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Assert):
                assert node.msg is not None, f"cell {index}, line {node.lineno}: an assert without a message"
                assert not isinstance(node.test, ast.Tuple), f"cell {index}, line {node.lineno}: asserts a tuple"
