"""The pretraining script is deterministic: the same seed gives the same losses and the same weights."""

import json

import torch
from safetensors.torch import load_file

from qlora_lessons.course_model.pretrain import pretrain


def test_pretraining_repeats_exactly_with_a_seed(tmp_path):
    first = pretrain(tmp_path / "a", steps=3, seed=7, progress=False)
    second = pretrain(tmp_path / "b", steps=3, seed=7, progress=False)
    assert first["loss_history"] == second["loss_history"] and first["final_loss"] == second["final_loss"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert log["steps"] == 3
    assert (tmp_path / "a" / "README.md").exists() and (tmp_path / "a" / "tokenizer.json").exists()
