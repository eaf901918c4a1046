"""The bundled course model: its world, its tokenizer, its weights, loading offline and in 4 bits."""

import json
import os
import subprocess
import sys

import pytest
import torch

from qlora_lessons.course_model import corpus
from qlora_lessons.models import (
    COURSE_MODEL_DIR,
    count_model_parameters,
    course_checks,
    is_course_model,
    load_model,
    resolve_model_path,
)


def test_checked_in_world_is_what_the_generator_writes():
    assert corpus.load_world() == json.loads(json.dumps(corpus.generate_world(corpus.WORLD_SEED)))


def test_world_is_split_by_country_and_values_are_unique_words():
    world = corpus.load_world()
    names = [c["name"] for c in world["countries"]]
    capitals = [c["capital"] for c in world["countries"]]
    assert len(set(names)) == len(names) == corpus.N_COUNTRIES
    assert len(set(capitals)) == len(capitals)
    assert not set(names) & set(capitals)
    assert all(len(v.split()) == 1 for c in world["countries"] for v in c.values())
    assert len(world["test_names"]) == corpus.N_TEST_COUNTRIES and set(world["test_names"]) <= set(names)


def test_pretraining_text_states_every_fact_but_never_the_question_format():
    world = corpus.load_world()
    documents = corpus.pretraining_documents(world)
    text = "\n".join(documents)
    for country in world["countries"][:20]:
        for attribute in corpus.ATTRIBUTES:
            assert sum(country[attribute] in d and country["name"] in d for d in documents) >= 6
    assert "Q:" not in text and "A:" not in text and "?" not in text


def test_tokenizer_loads_with_autotokenizer_and_keeps_names_whole():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(COURSE_MODEL_DIR)
    country = corpus.load_world()["countries"][0]
    tokens = tokenizer.tokenize(f"The capital of {country['name']} is {country['capital']}.")
    assert tokens == ["The", "capital", "of", country["name"], "is", country["capital"], "."]
    question = tokenizer(corpus.QUESTION_TEMPLATES["capital"].format(name=country["name"]))["input_ids"]
    assert tokenizer.unk_token_id not in question


def test_shipped_weights_are_small_and_described():
    weights = COURSE_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    card = (COURSE_MODEL_DIR / "README.md").read_text()
    log = json.loads((COURSE_MODEL_DIR / "training_log.json").read_text())
    assert f"{log['final_loss']:.4f}" in card and f"{log['n_parameters']:,}" in card
    assert "python -m qlora_lessons.course_model.pretrain" in card


def test_course_model_loads_offline_in_a_fresh_process():
    code = ("from qlora_lessons.models import load_model; m, t = load_model(); "
            "print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QLORA_LESSONS_MODE": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, n = result.stdout.split()
    log = json.loads((COURSE_MODEL_DIR / "training_log.json").read_text())
    assert name == "LlamaForCausalLM" and int(n) == log["n_parameters"]


def test_course_model_loads_in_nf4_with_double_quantization():
    import bitsandbytes as bnb

    model, tokenizer = load_model(quantization="nf4", double_quant=True, device="cpu")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    state = layer.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == 256 * 256 // 2
    full, _ = load_model(device="cpu")
    assert count_model_parameters(model) == count_model_parameters(full)
    batch = tokenizer(["The capital of"], return_tensors="pt")
    with torch.no_grad():
        logits4, logits = model(**batch).logits.float(), full(**batch).logits
    assert torch.isfinite(logits4).all()
    # 4-bit weights change the logits a little, not the model: the same next word is most likely
    assert logits4[0, -1].argmax() == logits[0, -1].argmax()


def test_a_4bit_model_evaluated_first_still_trains_through_its_4bit_layers():
    # bitsandbytes 0.50 re-packs 4-bit weights for a CPU inference kernel without a backward at the first
    # eval-mode forward on AVX512-BF16 CPUs; load_model keeps the trainable layout on every CPU.
    model, tokenizer = load_model(quantization="nf4", double_quant=True, device="cpu")
    layer = model.model.layers[0].mlp.down_proj
    packed = layer.weight.detach().clone()
    batch = tokenizer(["The capital of"], return_tensors="pt")
    with torch.no_grad():
        model(**batch)  # eval mode, no gradients: where bitsandbytes would re-pack
    assert torch.equal(layer.weight.detach(), packed) and layer.weight.quant_state.nested
    model.train()
    embeddings = model.model.embed_tokens(batch["input_ids"]).detach().requires_grad_(True)
    model(inputs_embeds=embeddings).logits.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0  # through all four 4-bit blocks


def test_hub_id_while_offline_says_how_to_use_the_course_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"load_model\('course-model'\).*path"):
        load_model("some-organisation/some-model-that-is-not-here")


def test_the_lessons_know_when_they_run_on_the_course_model(tmp_path, capsys):
    assert is_course_model("course-model") and is_course_model(COURSE_MODEL_DIR)
    assert is_course_model(str(COURSE_MODEL_DIR / ".." / "weights"))  # the same folder, written another way
    assert not is_course_model("Qwen/Qwen2.5-0.5B") and not is_course_model(tmp_path)
    assert course_checks("course-model") is True
    assert "every check runs" in capsys.readouterr().out
    assert course_checks(tmp_path) is False
    out = capsys.readouterr().out
    assert "is not the course model" in out and "skipped" in out and "if COURSE:" in out
    with pytest.raises(TypeError, match="model_id"):
        is_course_model("")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="quantization"):
        load_model(quantization="int3")
    with pytest.raises(TypeError, match="model_id"):
        resolve_model_path("")
    with pytest.raises(TypeError, match="compute_dtype"):
        load_model(quantization="nf4", compute_dtype=torch.int8)
    with pytest.raises(TypeError, match="tokenizer"):
        load_model(tokenizer="yes")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_folder_without_tokenizer_files_is_named_or_loaded_without_tokenizer(tmp_path, family):
    """A model saved from its config has weights and no tokenizer: Llama used to fail inside sentencepiece, Qwen2
    to load a tokenizer of one token that reads every text as nothing."""
    from transformers import AutoModelForCausalLM

    from any_models import tiny_configs

    saved = AutoModelForCausalLM.from_config(tiny_configs()[family])
    saved.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        load_model(tmp_path, device="cpu")
    assert str(tmp_path) in str(raised.value) and "tokenizer.json" in str(raised.value)
    assert "tokenizer=False" in str(raised.value)
    model = load_model(tmp_path, device="cpu", tokenizer=False)
    assert type(model) is type(saved) and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))


def test_the_course_model_loads_alone_or_with_its_tokenizer():
    model = load_model(device="cpu", tokenizer=False)
    with_tokenizer, tokenizer = load_model(device="cpu")
    assert isinstance(model, torch.nn.Module) and len(tokenizer) == with_tokenizer.config.vocab_size
    assert count_model_parameters(model) == count_model_parameters(with_tokenizer)
