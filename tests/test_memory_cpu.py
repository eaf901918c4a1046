"""Real training steps measured on the CPU: the profiler's live-tensor peak against the fake-tensor trace."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from qlora_lessons.memory_cpu import CpuMeasurement, measure_cpu_training_memory, resident_bytes, to_bitsandbytes_4bit
from qlora_lessons.memory_step import build_training_model

LLAMA = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512)
GPT2 = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128, bos_token_id=0, eos_token_id=0)
KNOBS = dict(r=4, target_modules="all-linear", batch_size=2, seq_len=32)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is read from /proc")


@linux_only
@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_real_tensor_peak_equals_the_trace(config, method):
    # two independent counts: torch's CPU allocator events on real tensors, and MemTracker on fake ones
    measured = measure_cpu_training_memory(config, method=method, fresh_process=False, **KNOBS)
    assert isinstance(measured, CpuMeasurement)
    assert measured.traced > 0 and measured.tensor_start > 0
    assert measured.tensor_over_trace == pytest.approx(1.0, abs=0.01), measured
    assert measured.tensor_peak > measured.tensor_start  # the step makes activations and gradients
    assert measured.resident_peak >= measured.resident_start > 0
    assert measured.seconds > 0


@linux_only
def test_a_fresh_process_measures_the_same_tensors():
    here = measure_cpu_training_memory(LLAMA, method="lora", fresh_process=False, trace=False, **KNOBS)
    there = measure_cpu_training_memory(LLAMA, method="lora", trace=False, mmap_threshold=131072, **KNOBS)
    assert here.traced == there.traced == 0
    assert there.tensor_peak == pytest.approx(here.tensor_peak, rel=1e-3)
    assert there.resident_before > 0


def test_bitsandbytes_layers_replace_the_frozen_linears():
    model = build_training_model(GPT2, method="lora", weight_dtype=torch.float32, r=4, target_modules="all-linear",
                                 gradient_checkpointing=False, double_quant=True, blocksize=64, device="cpu")
    assert to_bitsandbytes_4bit(model, blocksize=64, double_quant=True, compute_dtype=torch.float32) == 4 * 2
    kinds = {type(m).__name__ for name, m in model.named_modules() if name.endswith("base_layer")}
    assert kinds == {"Linear4bit"}
    assert model.base_model.model.lm_head.weight.dtype == torch.float32  # lm_head and embeddings stay


@linux_only
def test_resident_bytes_grows_with_a_large_tensor():
    before = resident_bytes()
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, written
    assert resident_bytes() - before >= 60 * 2**20
    del block


@pytest.mark.parametrize("kwargs, error", [
    (dict(fresh_process=False, mmap_threshold=131072), ValueError),
    (dict(mmap_threshold=0), ValueError),
    (dict(sample_every=0), ValueError),
    (dict(fresh_process="yes"), TypeError),
    (dict(learning_rate=1e-4), TypeError),
    (dict(method="half"), ValueError),
])
def test_bad_arguments_are_named(kwargs, error):
    with pytest.raises(error):
        measure_cpu_training_memory(LLAMA, **kwargs)
