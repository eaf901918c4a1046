"""qlora_lessons.qlora_memory: bytes counted from the tensors of full, LoRA and QLoRA training setups."""

from __future__ import annotations

import logging
import math

import bitsandbytes as bnb
import peft
import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from qlora_lessons.qlora import QLoRALinear, prepare_qlora
from qlora_lessons.qlora_memory import TrainingMemory, count_training_memory, measure_peak_bytes, random_causal_lm

from tiny_models import TINY_CONFIG, tiny_llama

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
CONFIG = TINY_CONFIG
LINEAR_WEIGHTS = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # q, k, v, o and gate, up, down in each of 2 layers


@pytest.fixture(autouse=True, scope="module")
def eager_bitsandbytes():
    """bitsandbytes wraps some CPU fallbacks in torch.compile; run them eagerly to keep this file fast."""
    with torch._dynamo.config.patch(disable=True):
        yield


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_a_linear_layer_with_adamw():
    layer = nn.Linear(1000, 1000, bias=False)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(3, 1000)).sum().backward()
    optimizer.step()
    memory = count_training_memory(layer, optimizer)
    assert memory == TrainingMemory(0, 0, 4_000_000, 4_000_000, 8_000_004)
    assert memory.total_bytes == 16_000_004 and "0.0160 GB" in repr(memory)


def test_full_fine_tuning_counts_tied_weights_once_and_16_bytes_per_parameter():
    model = tiny_llama(tie_word_embeddings=True)
    optimizer = torch.optim.AdamW(model.parameters())
    one_step(model, optimizer)
    memory = count_training_memory(model, optimizer)
    n = sum(p.numel() for p in model.parameters())  # tied: the embedding once
    assert n == LINEAR_WEIGHTS + 100 * 64 + 2 * 2 * 64 + 64
    assert memory.trainable_bytes == memory.gradient_bytes == 4 * n
    assert memory.optimizer_bytes == 8 * n + 4 * len(list(model.parameters()))  # m, v and the step counters
    assert memory.weight_bytes == sum(b.nbytes for b in model.buffers()) and memory.constant_bytes == 0


def test_qlora_from_scratch_counts_half_a_byte_per_weight_plus_constants():
    model = prepare_qlora(tiny_llama(), r=2, lora_alpha=4, compute_dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    one_step(model, optimizer)
    memory = count_training_memory(model, optimizer)
    lora = sum(2 * (m.in_features + m.out_features) for m in layers)  # r (in + out), r = 2
    assert memory.trainable_bytes == memory.gradient_bytes == 2 * lora  # bfloat16 A and B
    codes = sum(m.weight_4bit.numel() for m in layers)
    assert codes == LINEAR_WEIGHTS // 2
    blocks = [m.absmax.numel() for m in layers]
    assert memory.constant_bytes == sum(b + 4 * math.ceil(b / 256) + 16 * 4 + 256 * 4 for b in blocks)
    floats = sum(p.numel() * 4 for n, p in model.named_parameters() if not p.requires_grad)  # embeddings, norms
    assert memory.weight_bytes == codes + floats + sum(b.nbytes for n, b in model.named_buffers() if "rotary" in n)


def test_qlora_with_bitsandbytes_peft_and_an_8bit_optimizer():
    model = random_causal_lm(LlamaConfig(**CONFIG), quantization="nf4", dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not isinstance(model.lm_head, bnb.nn.Linear4bit)
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=1e-3, min_8bit_size=128)
    one_step(model, optimizer)
    memory = count_training_memory(model, optimizer)
    assert memory.weight_bytes >= LINEAR_WEIGHTS // 2 + 2 * 100 * 64 * 4  # codes + untied embedding and head
    assert memory.constant_bytes > sum(m.weight.quant_state.absmax.numel() for m in layers)  # nested codes + more
    n = sum(p.numel() for p in trainable)
    states = [s for s in optimizer.state.values()]
    assert all(s["state1"].dtype == torch.uint8 for s in states)
    blocks = sum(math.ceil(p.numel() / 256) for p in trainable)
    assert memory.optimizer_bytes == 2 * n + 2 * 4 * blocks + 2 * 256 * 4  # codes, absmax per 256, two maps


def test_random_causal_lm_builds_the_architecture_with_random_weights():
    reference = tiny_llama()
    for quantization in (None, "nf4"):
        model = random_causal_lm(LlamaConfig(**CONFIG), quantization=quantization, dtype=torch.float32, seed=1)
        assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
        assert torch.equal(model.model.norm.weight, torch.ones(64))
        assert abs(float(model.model.embed_tokens.weight.std()) - 0.02) < 0.002
        assert not any(p.device.type == "meta" for p in model.parameters())
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        assert logits.shape == (1, 3, 100) and torch.isfinite(logits).all()
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    with pytest.raises(ValueError, match="quantization must be"):
        random_causal_lm(LlamaConfig(**CONFIG), quantization="int4")
    with pytest.raises(TypeError, match="dtype must be"):
        random_causal_lm(LlamaConfig(**CONFIG), dtype=torch.int8)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be"):
        count_training_memory("model")
    with pytest.raises(TypeError, match="optimizer must be"):
        count_training_memory(nn.Linear(2, 2), optimizer="adam")
    with pytest.raises(TypeError, match="step must be a callable"):
        measure_peak_bytes(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error; the CUDA path is tested below")
def test_measure_peak_bytes_needs_cuda():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        measure_peak_bytes(lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measuring the CUDA allocator needs a CUDA device")
def test_measure_peak_bytes_sees_a_temporary_allocation():
    peak = measure_peak_bytes(lambda: torch.empty(2**28, dtype=torch.uint8, device="cuda"))
    assert peak >= 2**28


def test_pictures_and_the_answer_widget():
    from transformers import PreTrainedTokenizerFast

    from qlora_lessons.qlora_plots import answer_table, plot_training_memory
    memory = TrainingMemory(2_000_000, 100_000, 50_000, 50_000, 100_000)
    fig = plot_training_memory({"full": TrainingMemory(0, 0, 4_000_000, 4_000_000, 8_000_000), "QLoRA": memory})
    assert any("16.00 MB" in t.get_text() for t in fig.axes[0].texts)
    assert any("2.30 MB" in t.get_text() for t in fig.axes[0].texts)

    class Echo(nn.Module):  # a "model" whose generate writes a fixed answer after the prompt
        def __init__(self, token: int):
            super().__init__()
            self.token, self.weight = token, nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), self.token)], dim=1)

    from tokenizers import Tokenizer, models, pre_tokenizers

    core = Tokenizer(models.WordLevel({"<pad>": 0, "Q": 1, "A": 2, "Tarvesk": 3, "Orlan": 4}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<pad>")
    examples = [{"prompt": "Q A", "answer": "Tarvesk"}, {"prompt": "Q Q A", "answer": "Orlan"}]
    table = answer_table({"right": Echo(3), "wrong": Echo(4)}, tokenizer, examples)
    assert table.splitlines()[1].split()[-4:] == ["Tarvesk", "✓", "Orlan", "✗"]
