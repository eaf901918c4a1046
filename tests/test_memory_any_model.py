"""Estimate against trace for every family: full (bf16), LoRA and QLoRA, two sequence lengths, with and without
gradient checkpointing, on tiny configs (the published sizes: benchmarks/bench_memory_any_model.py)."""

import warnings

import pytest
import torch
import transformers

from qlora_lessons import estimate_training_memory, trace_training_memory

from any_models import tiny_configs

CONFIGS = tiny_configs()


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimate_agrees_with_the_trace(name, method):
    for seq_len in (256, 512):
        for checkpointing in (False, True):
            setting = dict(method=method, weight_dtype=torch.bfloat16, target_modules="all-linear", seq_len=seq_len,
                           gradient_checkpointing=checkpointing)
            estimate, trace = estimate_training_memory(CONFIGS[name], **setting), trace_training_memory(
                CONFIGS[name], **setting)
            where = f"{name} {method} T={seq_len} checkpointing={checkpointing}"
            assert trace.label == "trace", where
            for part in ("weights", "gradients", "optimizer", "quant_constants", "adapters"):
                assert getattr(estimate, part) == pytest.approx(getattr(trace, part), rel=0.01), f"{where}: {part}"
            assert estimate.total == pytest.approx(trace.total, rel=0.10), where


def test_extrapolated_depth_equals_the_full_trace_on_another_family():
    config = CONFIGS["qwen3"]
    config = type(config)(**{**config.to_dict(), "num_hidden_layers": 3, "layer_types": None})
    setting = dict(method="qlora", weight_dtype=torch.bfloat16, seq_len=128, gradient_checkpointing=True,
                   target_modules="all-linear")
    assert trace_training_memory(config, **setting, traced_layers=1) == trace_training_memory(config, **setting)


def test_a_step_that_cannot_be_traced_falls_back_to_the_estimate_and_says_so():
    config = transformers.MixtralConfig(**{**CONFIGS["mixtral"].to_dict()})
    config._experts_implementation = "eager"  # experts that gather their tokens with nonzero(): data-dependent sizes
    with pytest.warns(UserWarning, match="cannot be traced.*balanced routing"):
        result = trace_training_memory(config, seq_len=64)
    assert result.label.startswith("estimate, not traced") and "top-k" in result.label
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert result.total == estimate_training_memory(config, seq_len=64).total


def test_presets_names_and_dicts_work_where_configs_do():
    by_name = estimate_training_memory("qwen2.5-0.5b", method="qlora", target_modules="all-linear")
    from qlora_lessons.memory_models import load_config

    assert estimate_training_memory(load_config("qwen2.5-0.5b"), method="qlora", target_modules="all-linear") == by_name


def test_32bit_adamw_keeps_two_float32_moments_whatever_the_weight_dtype():
    setting = dict(method="lora", weight_dtype=torch.bfloat16, optimizer="adamw32bit", seq_len=128,
                   target_modules="all-linear")
    trace = trace_training_memory(CONFIGS["qwen2"], **setting)
    estimate = estimate_training_memory(CONFIGS["qwen2"], **setting)
    assert trace.optimizer == 8 * trace.adapters // 2 == estimate.optimizer  # adapters in bf16: 2 bytes a value
    assert estimate.total == pytest.approx(trace.total, rel=0.10)
