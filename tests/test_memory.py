"""qlora_lessons.memory and memory_estimate: bytes per dtype, Llama shapes, parameter counts, the estimator."""

import math

import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from qlora_lessons import (
    MODEL_NAMES,
    MemoryBreakdown,
    bytes_per_param,
    count_lora_parameters,
    count_parameters,
    estimate_training_memory,
    model_config,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_bytes_per_param_of_torch_dtypes_is_their_element_size(dtype):
    assert bytes_per_param(dtype) == torch.empty(0, dtype=dtype).element_size()
    assert bytes_per_param(str(dtype)) == bytes_per_param(dtype)  # "torch.float32" works too


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_bytes_per_param_of_nf4_matches_what_bitsandbytes_stores(double_quant, blocksize):
    n = 64 * 256 * 16  # whole blocks at both levels, so no padding
    packed, state = bnbf.quantize_4bit(torch.randn(n), blocksize=blocksize, quant_type="nf4",
                                       compress_statistics=double_quant)
    stored = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if double_quant:
        stored += state.state2.absmax.numel() * 4 + 4  # second-level absmax and the offset
    expected = bytes_per_param("nf4", quant_constants=True, blocksize=blocksize, double_quant=double_quant)
    assert stored / n == pytest.approx(expected, abs=4 / n + 1e-12)
    assert bytes_per_param("nf4") == bytes_per_param("fp4") == 0.5


def test_double_quantization_gives_the_papers_bits():
    bits = 8 * bytes_per_param("nf4", quant_constants=True, double_quant=True)
    assert round(bits, 3) == 4.127 and 8 * bytes_per_param("nf4", quant_constants=True) == 4.5


@pytest.mark.parametrize("bad", ["int4", "float64", "fp8"])
def test_unknown_dtype_is_named(bad):
    with pytest.raises(ValueError, match="dtype"):
        bytes_per_param(bad)
    with pytest.raises(TypeError, match="dtype"):
        bytes_per_param(4)


@pytest.mark.parametrize("name", ["llama-7b", "llama-13b", "llama-2-70b"])
def test_parameter_counts_match_the_transformers_model(name):
    config = model_config(name)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(count_parameters(config).values()) == sum(p.numel() for p in model.parameters())


def test_published_sizes():
    billions = {name: sum(count_parameters(model_config(name)).values()) / 1e9 for name in MODEL_NAMES}
    truncated = {name: math.floor(10 * value) / 10 for name, value in billions.items()}
    # LLaMA paper, Table 2: 6.7, 13.0, 32.5 and 65.2 billion (truncated); Llama 2 70B has 68.98e9 parameters
    assert [truncated[name] for name in ("llama-7b", "llama-13b", "llama-33b", "llama-65b")] == [6.7, 13.0, 32.5, 65.2]
    assert truncated["llama-2-70b"] == 68.9 and billions["llama-2-7b"] == billions["llama-7b"]


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), "all-linear", ("k_proj", "down_proj")])
def test_lora_counts_match_peft(targets):
    config = model_config("llama-2-70b")  # grouped-query attention: k_proj and v_proj are narrower
    config.num_hidden_layers = 2
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_lora_parameters(config, 16, targets) == trainable


def test_model_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="name 'llama-8b'"):
        model_config("llama-8b")


def test_the_13b_example():
    estimate = estimate_training_memory(13_000_000_000, method="full", weight_dtype=torch.float32, optimizer="adamw")
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (52e9, 52e9, 104e9)
    assert estimate.total == 208e9 and estimate.activations == 0
    assert "208.0 GB" in repr(estimate)


def test_optimizers_from_a_count():
    n = 1_000_000_000
    sgd = estimate_training_memory(n, optimizer="sgd", weight_dtype=torch.bfloat16)
    assert (sgd.weights, sgd.gradients, sgd.optimizer, sgd.total) == (2e9, 2e9, 0, 4e9)
    eight_bit = estimate_training_memory(n, optimizer="adamw8bit")
    assert eight_bit.optimizer == 2 * n + 8 * math.ceil(n / 256)  # two uint8 moments, two float32 absmax per 256


def test_the_seeds_ranges_for_13b():
    full = estimate_training_memory("llama-13b")
    lora = estimate_training_memory("llama-13b", method="lora", weight_dtype=torch.bfloat16)
    qlora = estimate_training_memory("llama-13b", method="qlora", weight_dtype=torch.bfloat16)
    assert full.total > 200e9 and 20e9 <= lora.total <= 40e9 and 10e9 <= qlora.total <= 20e9


def test_qlora_65b_fits_48_gb_and_16_bit_full_fine_tuning_does_not():
    setting = dict(weight_dtype=torch.bfloat16, r=64, target_modules="all-linear", gradient_checkpointing=True)
    assert estimate_training_memory("llama-65b", method="qlora", **setting).total < 48e9
    assert estimate_training_memory("llama-65b", **setting).total > 500e9


@pytest.mark.parametrize("kwargs, argument", [
    (dict(model=-5), "model"),
    (dict(model=13_000_000_000, method="lora"), "method"),
    (dict(method="prefix"), "method"),
    (dict(weight_dtype=torch.int8), "weight_dtype"),
    (dict(weight_dtype="nf4"), "weight_dtype"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(method="lora", r=5000), "r"),
    (dict(method="lora", r=0), "r"),
    (dict(method="lora", target_modules=("q", "v")), "target_modules"),
    (dict(batch_size=-1), "batch_size"),
    (dict(seq_len=0), "seq_len"),
    (dict(blocksize=48), "blocksize"),
    (dict(model="llama-8b"), "model"),
    (dict(gradient_checkpointing="yes"), "gradient_checkpointing"),
])
def test_bad_input_names_the_argument(kwargs, argument):
    kwargs = {"model": "llama-7b", **kwargs}
    with pytest.raises((ValueError, TypeError), match=argument):
        estimate_training_memory(kwargs.pop("model"), **kwargs)


def _config(h_heads, layers, vocab, width):
    heads, head_dim = h_heads
    return LlamaConfig(vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=width * heads * head_dim,
                       num_hidden_layers=layers, num_attention_heads=heads)


knobs = dict(
    config=st.builds(_config, st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([16, 32, 64])),
                     st.integers(2, 6), st.integers(100, 5000), st.sampled_from([2, 3])),
    method=st.sampled_from(["full", "lora", "qlora"]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    optimizer=st.sampled_from(["adamw", "adamw8bit", "sgd"]), batch=st.integers(1, 4), seq=st.integers(1, 512),
)


@settings(max_examples=60, deadline=None)
@given(**knobs)
def test_peak_lies_between_what_must_coexist_and_everything(config, method, dtype, optimizer, batch, seq):
    e = estimate_training_memory(config, method=method, weight_dtype=dtype, optimizer=optimizer, batch_size=batch,
                                 seq_len=seq)
    assert isinstance(e, MemoryBreakdown)
    resident = e.weights + e.quant_constants + e.adapters + e.optimizer
    assert resident + max(e.activations, e.gradients) <= e.total
    assert e.total <= sum(e.parts().values()) + 3 * max(e.weights, e.adapters)  # plus AdamW's step temporaries


@settings(max_examples=40, deadline=None)
@given(**knobs)
def test_longer_batches_need_more_and_checkpointing_needs_less(config, method, dtype, optimizer, batch, seq):
    def estimate(**extra):
        return estimate_training_memory(config, method=method, weight_dtype=dtype, optimizer=optimizer, **extra)

    assert estimate(batch_size=batch, seq_len=seq + 1).activations > estimate(batch_size=batch, seq_len=seq).activations
    assert estimate(batch_size=batch + 1, seq_len=seq).total >= estimate(batch_size=batch, seq_len=seq).total
    kept = estimate(batch_size=batch, seq_len=seq, gradient_checkpointing=True)
    assert kept.activations <= estimate(batch_size=batch, seq_len=seq).activations  # at least two layers


@settings(max_examples=30, deadline=None)
@given(**knobs)
def test_quantization_shrinks_the_weights_and_leaves_the_rest(config, method, dtype, optimizer, batch, seq):
    lora = estimate_training_memory(config, method="lora", weight_dtype=dtype, optimizer=optimizer)
    qlora = estimate_training_memory(config, method="qlora", weight_dtype=dtype, optimizer=optimizer)
    linear = count_parameters(config)["linear"]
    assert lora.weights - qlora.weights == pytest.approx(linear * (bytes_per_param(dtype) - 0.5), abs=2 * 7 * 6)
    assert (qlora.adapters, qlora.gradients, qlora.optimizer) == (lora.adapters, lora.gradients, lora.optimizer)
    assert lora.quant_constants == 0 < qlora.quant_constants
