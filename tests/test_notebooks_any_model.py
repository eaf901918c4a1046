"""The lessons that take a ``MODEL_ID`` run on a model that is not the course model, as a GPU learner's would.

In GPU mode a learner points ``MODEL_ID`` (the lesson's parameters cell, tagged ``parameters``) at a Hugging
Face model id or a downloaded folder. That path goes through ``load_model`` and every helper with a model
the course did not make: another architecture (a fused ``qkv_proj``, ``gate_up_proj``), other sizes, no
trained facts. Here each of those lessons runs top to bottom in a fresh kernel, in CPU mode and offline,
with papermill's ``-p MODEL_ID <folder>``: the folder holds a tiny Phi-3 with random weights, built from a
config when the test starts and saved with the course tokenizer. The step counts are set small too (the
lesson's parameters), since nothing trained from random weights in a few steps proves a claim: the test
passes when no cell raises, i.e. every cell runs on that model and the checks that hold only for the
trained course model say so and step aside. In CPU mode unless ``QLORA_LESSONS_MODE`` says otherwise (the
GPU workflow sets ``gpu``: the same runs on CUDA).

``QLORA_LESSONS_ANY_MODEL_OUTPUTS=folder`` keeps the executed notebooks there.
Run them yourself: ``papermill notebooks/04_lora_from_scratch.ipynb out.ipynb -p MODEL_ID /path/to/model``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebook_run

ROOT = Path(__file__).resolve().parents[1]
# Small step counts and sizes for each lesson's parameters cell: the runs are about the code path, not scores.
# The tiny model is a Phi-3: its attention has one fused qkv_proj, so the lessons that adapt Wq and Wv name it.
PARAMETERS = {
    "01_why_finetune": dict(FULL_STEPS=2, SCRATCH_STEPS=2),
    "03_low_rank_svd": dict(STEPS=2, ADAPTER_STEPS=2, ADAPTED=["qkv_proj"]),
    "04_lora_from_scratch": dict(STEPS=2, QV=lambda default: {**default, "target_modules": ["qkv_proj"]}),
    "05_nf4_by_hand": dict(),
    "07_paged_optimizers": dict(FINETUNE_STEPS=2),
    "08_qlora_end_to_end": dict(STEPS=2, FULL_STEPS=2),
}


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer Phi-3 (hidden 64) with random weights and the course tokenizer, saved in ``folder``.

    One change to the random weights: every embedding has a large first coordinate and the output head turns
    it into the end-of-sequence token, so greedy decoding ends each answer at once, as a trained model ends
    its short answers. With plain random weights every answer runs to ``max_new_tokens`` (8 forward passes
    instead of 1), and the lessons' scoring cells, which generate thousands of answers, take most of the time.
    """
    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from qlora_lessons.models import COURSE_MODEL_DIR

    tokenizer = AutoTokenizer.from_pretrained(COURSE_MODEL_DIR)
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0  # 50x the other coordinates (std 0.02)
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("any-model") / "tiny-phi3")


def _poll_in_short_slices() -> None:
    spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool._poll_in_short_slices()


def parameters_cell(path: Path):
    import nbformat

    tagged = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    return tagged[0] if len(tagged) == 1 else None


def lesson_parameters(lesson: str, model_id: str) -> dict:
    """The values to inject: ``MODEL_ID`` and ``PARAMETERS[lesson]``, where a function changes the lesson's default."""
    defaults: dict = {}
    exec(parameters_cell(ROOT / "notebooks" / f"{lesson}.ipynb").source, defaults)  # literals only
    return {"MODEL_ID": model_id, **{name: value(defaults[name]) if callable(value) else value
                                     for name, value in PARAMETERS[lesson].items()}}


def test_every_lesson_with_a_model_id_has_a_parameters_cell():
    """papermill injects its values in a cell after the one tagged ``parameters``: that cell holds the lesson's
    settings as constants, and anything computed from them (``COURSE``) comes later, or it would miss them."""
    import ast

    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        if path.stem not in PARAMETERS:
            assert not any("MODEL_ID = " in c.source for c in cells if c.cell_type == "code"), (
                f"{path.name} sets MODEL_ID: add it to PARAMETERS here, and tag its cell 'parameters'")
            continue
        cell = parameters_cell(path)
        assert cell is not None and cell.source.startswith("MODEL_ID = "), (
            f"{path.name}: one cell tagged 'parameters', the one that sets MODEL_ID first")
        tree = ast.parse(cell.source)
        assert all(isinstance(node, ast.Assign) for node in tree.body), f"{path.name}: assignments only"
        names = {target.id for node in tree.body for target in ast.walk(node) if isinstance(target, ast.Name)
                 and isinstance(target.ctx, ast.Store)}
        computed = [ast.unparse(node) for node in tree.body
                    if any(isinstance(name, ast.Name) for name in ast.walk(node.value))]
        assert not computed, f"{path.name}: the parameters cell computes {computed}; move that below it"
        assert set(PARAMETERS[path.stem]) <= names, f"{path.name}: sets {sorted(PARAMETERS[path.stem])}"


@pytest.mark.parametrize("lesson", sorted(PARAMETERS))
def test_lesson_runs_on_another_model(lesson, tiny_model, tmp_path, monkeypatch):
    import papermill

    _poll_in_short_slices()
    monkeypatch.setenv("QLORA_LESSONS_MODE", os.environ.get("QLORA_LESSONS_MODE") or "cpu")  # the GPU workflow: gpu
    for name, value in dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                            MPLBACKEND="Agg").items():
        monkeypatch.setenv(name, value)  # the kernel inherits them
    keep = os.environ.get("QLORA_LESSONS_ANY_MODEL_OUTPUTS")
    output = Path(keep) / f"{lesson}.any-model.ipynb" if keep else tmp_path / f"{lesson}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(ROOT / "notebooks" / f"{lesson}.ipynb", output, kernel_name="python3",
                                   parameters=lesson_parameters(lesson, str(tiny_model)),
                                   cwd=ROOT / "notebooks", progress_bar=False, execution_timeout=900)
    except papermill.PapermillExecutionError as error:
        pytest.fail(f"{lesson} with MODEL_ID={tiny_model.name}: cell {error.exec_count} raised "
                    f"{error.ename}: {error.evalue}", pytrace=False)
    print(f"{lesson}: {time.perf_counter() - start:.1f} s with {tiny_model.name}")
