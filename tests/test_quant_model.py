"""Tests of qlora_lessons.quant_model: round-tripped weights put into a model and taken out again, and the
codes' effect on the course model's predictions."""

from __future__ import annotations

import pytest
import torch

from qlora_lessons.course_model.corpus import load_world, pretraining_documents
from qlora_lessons.models import load_model
from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit
from qlora_lessons.quant_model import (
    METHODS,
    CodeOnModel,
    measure_codes_on_model,
    quantizable_linears,
    quantized_linear_weights,
    roundtrip_weight,
)


@pytest.fixture(scope="module")
def course():
    return load_model(device="cpu")


def test_roundtrip_weight_is_quantize_then_dequantize():
    w = torch.randn(64, 128)
    assert torch.equal(roundtrip_weight(w, "fp4"), dequantize_4bit(*quantize_4bit(w, 64, "fp4")))
    assert roundtrip_weight(w, "int4_asym").shape == w.shape
    with pytest.raises(ValueError, match="method"):
        roundtrip_weight(w, "nf3")


def test_the_context_manager_swaps_every_linear_but_the_tied_head_and_restores_them(course):
    model, _ = course
    layers = quantizable_linears(model)
    assert all(m.weight is not model.get_output_embeddings().weight for m in layers.values())
    before = {name: m.weight.detach().clone() for name, m in layers.items()}
    with quantized_linear_weights(model, "nf4") as n:
        assert n == len(layers) == 28
        name, layer = next(iter(layers.items()))
        assert torch.equal(layer.weight, roundtrip_weight(before[name], "nf4"))
    assert all(torch.equal(m.weight, before[name]) for name, m in layers.items())


def test_weights_are_restored_when_the_block_raises(course):
    model, _ = course
    layer = next(iter(quantizable_linears(model).values()))
    before = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), quantized_linear_weights(model, "fp4"):
        raise RuntimeError("boom")
    assert torch.equal(layer.weight, before)


def test_codes_on_the_course_model_rank_as_lesson_05_states(course):
    model, tokenizer = course
    texts = pretraining_documents(load_world())[::64]  # the lesson's 127 texts
    results = measure_codes_on_model(model, tokenizer, texts)
    assert set(results) == set(METHODS) and all(isinstance(r, CodeOnModel) for r in results.values())
    kl = {k: r.kl for k, r in results.items()}
    assert all(v > 0 for v in kl.values())
    assert kl["fp4"] > 1.1 * kl["int4"] and kl["int4"] > 1.3 * kl["nf4"] and kl["int4"] > 1.1 * kl["int4_asym"]
    assert tokenizer.padding_side == "left"  # left as it was


def test_measure_refuses_bad_arguments(course):
    model, tokenizer = course
    with pytest.raises(ValueError, match="texts"):
        measure_codes_on_model(model, tokenizer, "one string")
    with pytest.raises(ValueError, match="methods"):
        measure_codes_on_model(model, tokenizer, ["a"], methods=("nf5",))
