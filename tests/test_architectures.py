"""The LoRA and QLoRA helpers on tiny random models of every common architecture, checked against peft.

For each family (tests/any_models.py, plus OLMoE): ``add_lora`` picks the layers peft picks, with named
targets and with "all-linear"; it trains (forward and backward); ``count_lora_params`` is peft's count;
``save_as_peft`` reloads in ``peft.PeftModel.from_pretrained`` with the same logits; ``merge_lora`` keeps
them; ``prepare_qlora`` trains; the model loads in 4 bits through bitsandbytes and trains with an adapter.
Mixture-of-Experts models keep their experts in 3-D tensors, which peft adapts with ``target_parameters``
and bitsandbytes leaves in 16 bits: the helpers warn (``LeftOutWarning``), naming exactly those tensors.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import peft
import pytest
import torch
import transformers
from peft.tuners.lora.layer import LoraLayer, ParamWrapper
from transformers import AutoModelForCausalLM

from qlora_lessons import add_lora, count_trainable, merge_lora, prepare_qlora, save_as_peft
from qlora_lessons.lora import count_lora_params, linear_layer_names, lora_layers, merge_and_unload
from qlora_lessons.lora_coverage import LeftOutWarning, matrices_outside_linear_layers
from qlora_lessons.models import COURSE_MODEL_DIR, count_model_parameters, load_model
from qlora_lessons.qlora import QLoRALinear

from any_models import tiny_configs

CONFIGS = {**tiny_configs(), "olmoe": transformers.OlmoeConfig(
    vocab_size=128, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, pad_token_id=1, bos_token_id=None,
    eos_token_id=0)}
MOE = ("mixtral", "qwen3_moe", "olmoe")
# Two named targets in each family's own names (GPT-2: the fused q, k, v projection and the MLP's first layer).
NAMED = {"phi3": ["qkv_proj", "down_proj"], "opt": ["q_proj", "fc1"], "gpt2": ["c_attn", "c_fc"]}
IDS = torch.tensor([[5, 17, 42, 99, 7, 23, 64, 3], [8, 120, 33, 2, 71, 54, 19, 90]])


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[name]).eval()


def quiet_add_lora(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeftOutWarning)
        return add_lora(model, *args, **kwargs)


def peft_model(model, target_modules, r=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on Conv1D fan_in_fan_out and on MoE rank patterns
        return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules))


def peft_layers(model) -> tuple[set[str], set[str]]:
    """(linear layers peft adapted, parameters it adapted with target_parameters), by name in the base model."""
    linear, parameters = set(), set()
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, ParamWrapper):
            owner = name.removesuffix(".base_layer").removesuffix(".base_layer")
            parameters.add(f"{owner}.{module.parameter_name}")
        elif isinstance(module, LoraLayer):
            linear.add(name)
    return linear, parameters


def trains(model) -> None:
    """A forward and backward pass; every trainable tensor gets a gradient, and only those."""
    model(IDS, labels=IDS).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_linear_and_named_targets_pick_what_peft_picks(name):
    """peft's own "all-linear" (no target_parameters passed): on MoE models it adds the router and experts."""
    from qlora_lessons.lora_experts import parameter_adapters

    model = build(name)
    for targets in ("all-linear", NAMED.get(name, ["q_proj", "v_proj"])):
        theirs = peft_model(build(name), targets)
        linear, parameters = peft_layers(theirs)
        expected = count_lora_params(model, targets, r=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error", LeftOutWarning)  # nothing left out: peft adapts every MoE tensor too
            ours = add_lora(build(name), targets, r=4, lora_alpha=8)
        assert bool(parameters) == (targets == "all-linear" and name in MOE), "peft adds tensors exactly for MoE"
        assert set(lora_layers(ours)) == linear, f"{targets}: the same layers as peft's"
        assert set(parameter_adapters(ours)) == parameters, f"{targets}: the same tensors as peft's"
        assert count_trainable(ours).trainable == expected == count_trainable(theirs).trainable, "peft's count"
        shapes = {n: tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}
        assert sorted(map(tuple, (p.shape for p in ours.parameters() if p.requires_grad))) == sorted(
            shapes.values()), "every A and B has peft's shape (rank 2r on gate_up_proj)"


def test_all_linear_warns_about_what_peft_leaves_out_too():
    """A MoE type outside peft's rule (renamed, so transformers maps no conversion): experts left out, said so."""
    config = CONFIGS["olmoe"].to_dict() | {"model_type": "not_olmoe"}
    model = build("olmoe")
    model.config = transformers.PretrainedConfig.from_dict(config)
    with pytest.warns(LeftOutWarning, match=r"experts\.gate_up_proj .* x2.*peft's 'all-linear' leaves"):
        add_lora(model, "all-linear", r=4, lora_alpha=8)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lora_trains_saves_for_peft_and_merges(name, tmp_path):
    model = quiet_add_lora(build(name), "all-linear", r=4, lora_alpha=8)
    trains(model)
    assert not lora_layers(saves_for_peft_and_merges(name, model, tmp_path))


def saves_for_peft_and_merges(name, model, tmp_path):
    """B made random; peft reloads the saved adapter with the same logits; merging keeps them. Returns the merged."""
    from qlora_lessons.lora_experts import parameter_adapters

    model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in [*parameter_adapters(model).values(), *lora_layers(model).values()]:
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.1)
        logits = model(IDS).logits
    save_as_peft(model, tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = peft.PeftModel.from_pretrained(build(name), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merge_lora(model)(IDS).logits, logits, rtol=1e-4, atol=1e-4)
        plain = merge_and_unload(model)
        torch.testing.assert_close(plain(IDS).logits, logits, rtol=1e-4, atol=1e-4)
    return plain


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prepare_qlora_quantizes_every_linear_layer_and_trains(name):
    model = build(name)
    head_and_linear = linear_layer_names(model)
    tensors = sorted({".".join(n.split(".")[-2:]) for n in matrices_outside_linear_layers(model)}) or None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", LeftOutWarning)
        prepare_qlora(model, r=2, lora_alpha=4, compute_dtype=torch.float32, target_parameters=tensors)
    assert bool([w for w in record if w.category is LeftOutWarning]) == (name in MOE), "warns exactly for MoE"
    quantized = [n for n, m in model.named_modules() if isinstance(m, QLoRALinear)]
    assert len(quantized) == len(head_and_linear) - 1, "every linear layer but the output head"
    trains(model)


@pytest.mark.parametrize("name", MOE)
def test_prepare_qlora_all_linear_adapts_what_peft_adapts(name):
    from qlora_lessons.lora_experts import parameter_adapters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeftOutWarning)  # "quantizes linear layers only": experts stay 16-bit
        model = prepare_qlora(build(name), r=2, lora_alpha=4, compute_dtype=torch.float32)
    theirs = peft_model(build(name), "all-linear", r=2)
    assert set(parameter_adapters(model)) == peft_layers(theirs)[1], "the same tensors as peft's all-linear"
    assert count_trainable(model).trainable == count_trainable(theirs).trainable


@functools.cache
def saved(name: str, folder: str) -> str:
    """The tiny model saved with the course tokenizer (load_model loads one), once per session."""
    build(name).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(COURSE_MODEL_DIR / file, folder)
    return folder


@pytest.mark.parametrize("name", list(CONFIGS))
def test_4bit_load_counts_and_trains_with_an_adapter(name, tmp_path_factory):
    folder = saved(name, str(tmp_path_factory.mktemp(name)))
    full = count_trainable(build(name)).total
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", LeftOutWarning)
        model, _ = load_model(folder, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    assert bool([w for w in record if w.category is LeftOutWarning]) == (name in MOE), "warns exactly for MoE"
    import bitsandbytes as bnb

    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == set(linear_layer_names(build(name))) - {"lm_head"}, "every linear layer but the head"
    assert count_trainable(model).total == full == count_model_parameters(model), "4-bit weights count as weights"
    tensors = sorted({".".join(n.split(".")[-2:]) for n in matrices_outside_linear_layers(model)}) or None
    model = add_lora(model, "all-linear", r=2, lora_alpha=4, target_parameters=tensors)  # MoE: experts in 16 bits
    model.train()
    trains(model)


@pytest.mark.parametrize("name", MOE)
def test_moe_experts_and_router_adapted_with_target_parameters_as_peft(name, tmp_path):
    """add_lora(target_parameters=...) adapts the 3-D expert tensors and the router as peft's ParamWrapper does."""
    from qlora_lessons.lora_experts import parameter_adapters

    model = build(name)
    tensors = sorted({".".join(n.split(".")[-2:]) for n in matrices_outside_linear_layers(model)})
    assert tensors == ["experts.down_proj", "experts.gate_up_proj", "gate.weight"]
    expected = count_lora_params(model, "all-linear", r=4, target_parameters=tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeftOutWarning)  # nothing is left out now
        ours = add_lora(build(name), "all-linear", r=4, lora_alpha=8, target_parameters=tensors)
    leaves = sorted({n.rpartition(".")[2] for n in lora_layers(ours)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(build(name), peft.LoraConfig(r=4, lora_alpha=8, target_modules=leaves,
                                                                  target_parameters=tensors))
    assert peft_layers(theirs)[1] == set(parameter_adapters(ours)), "the same tensors as peft's ParamWrappers"
    assert count_trainable(ours).trainable == expected == count_trainable(theirs).trainable
    ours.train()
    trains(ours)
    plain = saves_for_peft_and_merges(name, ours, tmp_path)
    assert not parameter_adapters(plain)
    assert {n for n, _ in plain.named_parameters()} == {n for n, _ in build(name).named_parameters()}
