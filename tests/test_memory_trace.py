"""qlora_lessons.memory_trace and memory_step: fake-tensor traces of training steps, and the CUDA measurement."""

import pytest
import torch
from transformers import LlamaConfig

from qlora_lessons import (
    estimate_training_memory,
    measure_training_memory,
    model_config,
    trace_training_memory,
)
from qlora_lessons.memory_estimate import check_knobs
from qlora_lessons.memory_step import build_training_model, make_optimizer, run_training_steps
from qlora_lessons.memory_trace import _trace_depth

TINY = dict(vocab_size=1500, hidden_size=64, intermediate_size=128, num_attention_heads=4)


def _knobs(**kwargs):
    defaults = dict(method="full", weight_dtype=torch.float32, optimizer="adamw", r=8,
                    target_modules=("q_proj", "v_proj"), batch_size=1, seq_len=64, gradient_checkpointing=False,
                    double_quant=True, blocksize=64)
    return check_knobs(**{**defaults, **kwargs})


def _tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def test_a_full_fine_tune_holds_weights_gradients_and_two_adam_moments():
    config = LlamaConfig(**TINY, num_hidden_layers=2)
    with torch.device("meta"):
        model = build_training_model(config, **{k: v for k, v in _knobs().items() if k not in (
            "optimizer", "batch_size", "seq_len", "optimizer_impl")}, device="meta")
    weights = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    tensors = sum(1 for _ in model.parameters())
    trace = trace_training_memory(config, seq_len=64)
    assert trace.weights == weights and trace.gradients == _tensor_bytes(model.parameters())
    assert trace.optimizer == 2 * trace.gradients + 4 * tensors  # m and v, and a float32 step count per tensor
    assert trace.total > trace.weights + trace.gradients + trace.optimizer  # plus AdamW's temporaries
    sgd = trace_training_memory(config, seq_len=64, optimizer="sgd")
    assert sgd.optimizer == 0 and sgd.total < trace.total


def test_the_phase_of_the_peak_changes_with_depth_and_extrapolation_follows_it():
    # 1 or 2 layers: the optimizer step is the peak; 4 layers: the forward and backward passes are
    config = LlamaConfig(**TINY, num_hidden_layers=4)
    for layers in (1, 2):
        _, shallow = _trace_depth(LlamaConfig(**TINY, num_hidden_layers=layers), _knobs())
        assert shallow["step"] > shallow["passes"]
    full, deep = _trace_depth(config, _knobs())
    assert deep["passes"] > deep["step"]
    assert trace_training_memory(config, seq_len=64, traced_layers=1) == full


@pytest.mark.parametrize("method, checkpointing", [("lora", True), ("qlora", True)])
def test_extrapolated_traces_equal_full_traces(method, checkpointing):
    config = LlamaConfig(**TINY, num_hidden_layers=3)
    setting = dict(method=method, weight_dtype=torch.bfloat16, seq_len=128, gradient_checkpointing=checkpointing,
                   optimizer="adamw8bit")
    assert trace_training_memory(config, **setting, traced_layers=1) == trace_training_memory(config, **setting)


@pytest.mark.parametrize("name", ["llama-7b", "llama-13b"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_estimate_agrees_with_the_trace(name, method):
    estimate = estimate_training_memory(name, method=method, batch_size=1, seq_len=512)
    trace = trace_training_memory(model_config(name), method=method, batch_size=1, seq_len=512, traced_layers=1)
    for part in ("weights", "gradients", "optimizer", "quant_constants", "adapters"):
        assert getattr(estimate, part) == pytest.approx(getattr(trace, part), rel=0.01), part
    assert estimate.total == pytest.approx(trace.total, rel=0.10)
    assert estimate.activations == pytest.approx(trace.activations, rel=0.10)


def test_qlora_fits_65b_in_48_gb():
    # the QLoRA paper's setting: 4-bit NF4 with double quantization, rank 64 on all linear layers, checkpointing
    setting = dict(method="qlora", weight_dtype=torch.bfloat16, r=64, target_modules="all-linear",
                   gradient_checkpointing=True, double_quant=True)
    trace = trace_training_memory(model_config("llama-65b"), **setting, traced_layers=1)
    assert trace.total < 48e9
    assert estimate_training_memory("llama-65b", **setting).total == pytest.approx(trace.total, rel=0.10)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(method="lora", r=100_000), "r"),
    (dict(traced_layers=0), "traced_layers"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(seq_len=-3), "seq_len"),
])
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        trace_training_memory(LlamaConfig(**TINY, num_hidden_layers=2), **kwargs)
    with pytest.raises(TypeError, match="config"):
        trace_training_memory(7_000_000_000)  # a count has no shapes; a preset name such as "llama-7b" works


@pytest.mark.parametrize("method, optimizer", [("full", "sgd"), ("qlora", "adamw8bit")])
def test_the_measured_step_runs_and_trains_on_real_tensors(method, optimizer):
    # the path measure_training_memory takes on a GPU, here on the CPU with real values
    config = LlamaConfig(**TINY, num_hidden_layers=2)
    knobs = _knobs(method=method, optimizer=optimizer, target_modules="all-linear", gradient_checkpointing=True)
    torch.manual_seed(0)
    model = build_training_model(config, **{k: v for k, v in knobs.items() if k not in (
        "optimizer", "batch_size", "seq_len", "optimizer_impl")}, device="cpu")
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, optimizer, traced=False)
    run_training_steps(model, optimizer, torch.randint(0, config.vocab_size, (2, 16)))
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trained[name])]
    assert changed and all(p.grad is None for p in model.parameters())
    assert (method == "full") == all(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_measuring_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="CUDA"):
        measure_training_memory(LlamaConfig(**TINY, num_hidden_layers=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.max_memory_allocated")
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_measured_peak_agrees_with_the_trace(method):
    config = model_config("llama-7b")
    config.num_hidden_layers = 4  # about 1.1e9 parameters
    setting = dict(method=method, weight_dtype=torch.bfloat16, target_modules="all-linear", seq_len=512)
    measured = measure_training_memory(config, **setting)
    trace = trace_training_memory(config, **setting)
    assert measured.weights == trace.weights and measured.optimizer == pytest.approx(trace.optimizer, rel=0.01)
    assert measured.total == pytest.approx(trace.total, rel=0.10)


@pytest.mark.parametrize("shape, method", [(dict(tie_word_embeddings=True), "full"),
                                           (dict(num_key_value_heads=2), "qlora")])
def test_estimate_agrees_with_the_trace_on_tied_embeddings_and_grouped_query_attention(shape, method):
    config = LlamaConfig(**TINY, num_hidden_layers=2, **shape)
    setting = dict(method=method, target_modules="all-linear", seq_len=256)
    estimate, trace = estimate_training_memory(config, **setting), trace_training_memory(config, **setting)
    for part in ("weights", "gradients", "optimizer", "quant_constants", "adapters"):
        assert getattr(estimate, part) == pytest.approx(getattr(trace, part), rel=0.01), part
    assert estimate.total == pytest.approx(trace.total, rel=0.10)
