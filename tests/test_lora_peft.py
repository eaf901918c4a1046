"""qlora_lessons.lora_peft: adapters saved here load in peft with the same logits, and the other way round."""

import json

import peft
import pytest
import torch
from safetensors.torch import load_file

from qlora_lessons.lora import add_lora, lora_layers, set_adapter
from qlora_lessons.lora_peft import load_peft_adapter, save_as_peft

from tiny_models import tiny_llama

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


def trained_lora(targets, r=4, lora_alpha=8, adapter_name="default", model=None, seed=1):
    """A tiny Llama with an adapter whose A and B are random (as after training)."""
    model = add_lora(model if model is not None else tiny_llama(), targets, r=r, lora_alpha=lora_alpha,
                     adapter_name=adapter_name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if adapter_name in layer.adapters:
                adapter = layer.adapters[adapter_name]
                adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=generator) * 0.1)
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear", ["model.layers.1.mlp.down_proj"]])
def test_peft_loads_the_saved_adapter_with_the_same_logits(tmp_path, targets):
    model = trained_lora(targets)
    expected = model(IDS).logits
    assert (expected - tiny_llama()(IDS).logits).abs().max() > 1e-3  # the adapter does change the model
    save_as_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert (loaded(input_ids=IDS).logits - expected).abs().max() <= 1e-6
    peft_layers = {name.removeprefix("base_model.model.") for name, module in loaded.named_modules()
                   if isinstance(module, peft.tuners.lora.LoraLayer)}
    assert peft_layers == set(lora_layers(model))


def test_the_files_are_peft_s_layout(tmp_path):
    save_as_peft(trained_lora(["q_proj", "v_proj"]), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["task_type"]) == ("LORA", 4, 8, "CAUSAL_LM")
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (64, 4)
    assert len(tensors) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_a_subset_of_layers_is_saved_by_full_name(tmp_path):
    save_as_peft(trained_lora(["model.layers.0.self_attn.q_proj"]), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.0.self_attn.q_proj"]  # "q_proj" would also pick layer 1


def test_peft_adapters_load_into_lora_linear(tmp_path):
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    theirs.save_pretrained(tmp_path)
    ours = load_peft_adapter(tiny_llama(), tmp_path)
    assert len(lora_layers(ours)) == 14 and next(iter(lora_layers(ours).values())).scaling == 4.0
    assert (ours(IDS).logits - theirs(input_ids=IDS).logits).abs().max() <= 1e-6


def test_a_named_second_adapter_is_saved_on_its_own(tmp_path):
    model = trained_lora(["q_proj", "v_proj"], adapter_name="qa")
    trained_lora("all-linear", r=2, lora_alpha=2, adapter_name="style", model=model, seed=3)
    expected_style = model(IDS).logits
    set_adapter(model, "qa")
    expected_qa = model(IDS).logits
    save_as_peft(model, tmp_path / "style", adapter_name="style")
    save_as_peft(model, tmp_path / "qa")  # the active adapter
    for name, expected in (("qa", expected_qa), ("style", expected_style)):
        loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / name)
        assert (loaded(input_ids=IDS).logits - expected).abs().max() <= 1e-6


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters; call add_lora"):
        save_as_peft(tiny_llama(), tmp_path)
    with pytest.raises(ValueError, match=r"no adapter named 'x'; the model has \['default'\]"):
        save_as_peft(trained_lora(["q_proj"]), tmp_path, adapter_name="x")
    with pytest.raises(FileNotFoundError, match="adapter_config.json and adapter_model.safetensors"):
        load_peft_adapter(tiny_llama(), tmp_path / "missing")
    peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"], use_rslora=True)).save_pretrained(
        tmp_path / "rslora")
    with pytest.raises(ValueError, match="sets use_rslora=True; only plain LoRA"):
        load_peft_adapter(tiny_llama(), tmp_path / "rslora")
