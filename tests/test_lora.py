"""qlora_lessons.lora_layer and lora: the LoRA layer against peft's, model wrapping, adapters, merging."""

import copy
import math
from collections import OrderedDict

import peft
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlora_lessons.lora import (
    LoRALinear,
    adapter_names,
    add_lora,
    count_lora_params,
    count_trainable,
    disable_adapter,
    linear_layer_names,
    lora_layers,
    merge_and_unload,
    merge_lora,
    set_adapter,
    unmerge_lora,
)
from qlora_lessons.memory import count_lora_parameters

from tiny_models import tiny_llama

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def randomize_lora(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Give every B a non-zero value (as after training), so that the adapters change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for adapter in layer.adapters.values():
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * std)


def peft_linear(base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0):
    """peft's LoRA layer (peft.tuners.lora.layer.Linear) around a copy of ``base``."""
    model = peft.get_peft_model(nn.Sequential(OrderedDict(proj=copy.deepcopy(base))),
                                peft.LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                target_modules=["proj"]))
    return model.base_model.model.proj


def with_weights(base: nn.Linear, A: torch.Tensor, B: torch.Tensor, lora_alpha: float, lora_dropout: float = 0.0):
    """Our layer and peft's, both holding the given A (r, in) and B (out, r)."""
    r = A.shape[0]
    ours = LoRALinear(copy.deepcopy(base), r, lora_alpha, lora_dropout)
    theirs = peft_linear(base, r, lora_alpha, lora_dropout)
    with torch.no_grad():
        ours.lora_A.copy_(A), ours.lora_B.copy_(B)
        theirs.lora_A["default"].weight.copy_(A), theirs.lora_B["default"].weight.copy_(B)
    return ours, theirs


@st.composite
def layer_case(draw):
    in_features, out_features = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    r = draw(st.integers(1, min(in_features, out_features)))
    alpha = draw(st.sampled_from([1, 8, 16, 32.5]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    base = nn.Linear(in_features, out_features, bias=draw(st.booleans()))
    A = torch.randn(r, in_features, generator=generator)
    B = torch.randn(out_features, r, generator=generator) * 0.1
    x = torch.randn(3, 5, in_features, generator=generator)
    return base, A, B, alpha, x


@settings(max_examples=15, deadline=None)
@given(layer_case())
def test_forward_and_gradients_equal_peft(case):
    base, A, B, alpha, x = case
    ours, theirs = with_weights(base, A, B, alpha)
    out_ours, out_theirs = ours(x), theirs(x)
    assert (out_ours - out_theirs).abs().max() <= 1e-6
    upstream = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(0))
    (out_ours * upstream).sum().backward()
    (out_theirs * upstream).sum().backward()
    assert (ours.lora_A.grad - theirs.lora_A["default"].weight.grad).abs().max() <= 1e-6
    assert (ours.lora_B.grad - theirs.lora_B["default"].weight.grad).abs().max() <= 1e-6
    # the equation as written: h = W0 x + b + (alpha / r) x A^T B^T
    by_hand = base(x) + (alpha / A.shape[0]) * x @ A.T @ B.T
    assert torch.allclose(out_ours, by_hand, rtol=1e-5, atol=1e-5)


def test_dropout_in_training_mode_equals_peft_under_the_same_seed():
    torch.manual_seed(0)
    base, x = nn.Linear(32, 24), torch.randn(4, 32)
    ours, theirs = with_weights(base, torch.randn(4, 32), torch.randn(24, 4), lora_alpha=8, lora_dropout=0.3)
    ours.train(), theirs.train()
    torch.manual_seed(5)
    out_ours = ours(x)
    torch.manual_seed(5)
    assert torch.equal(out_ours, theirs(x))
    torch.manual_seed(6)
    assert not torch.equal(out_ours, ours(x))  # dropout is really on
    ours.eval()
    assert torch.equal(ours(x), ours(x))


def test_initialization_is_peft_s():
    """A: kaiming_uniform(a=sqrt(5)), bound 1/sqrt(in); B: zeros; the same draw as peft's when the RNG is replayed."""
    torch.manual_seed(3)
    theirs = peft_linear(nn.Linear(48, 40), r=4, lora_alpha=8)
    torch.manual_seed(3)
    nn.Linear(48, 4, bias=False), nn.Linear(4, 40, bias=False)  # peft builds lora_A and lora_B as nn.Linear first
    ours = LoRALinear(nn.Linear(48, 40), r=4, lora_alpha=8)
    assert torch.equal(ours.lora_A, theirs.lora_A["default"].weight)
    assert ours.lora_A.abs().max() <= 1 / math.sqrt(48) and ours.lora_A.std() > 0.5 / math.sqrt(3 * 48)
    assert torch.equal(ours.lora_B, torch.zeros(40, 4)) and ours.scaling == 2.0


@settings(max_examples=15, deadline=None)
@given(layer_case())
def test_zero_initialized_b_changes_nothing(case):
    base, _, _, alpha, x = case
    layer = LoRALinear(copy.deepcopy(base), r=1, lora_alpha=alpha)
    assert torch.equal(layer(x), base(x))
    assert [name for name, p in layer.named_parameters() if p.requires_grad] == ["adapters.default.lora_A",
                                                                                 "adapters.default.lora_B"]


EPS = torch.finfo(torch.float32).eps


@settings(max_examples=15, deadline=None)
@given(layer_case())
def test_merge_then_unmerge_restores_w0_and_keeps_outputs(case):
    """Equal up to float32 rounding: W0 to eps (|W0| + |W0 + dW|) per entry, outputs to n eps |W| |x|."""
    base, A, B, alpha, x = case
    layer = LoRALinear(base, A.shape[0], alpha)
    with torch.no_grad():
        layer.lora_A.copy_(A), layer.lora_B.copy_(B)
    W0 = base.weight.detach().clone()
    unmerged = layer(x).detach()
    plain = layer.merged_linear()
    assert type(plain) is nn.Linear and torch.equal(layer.base_layer.weight, W0)  # merged_linear leaves W0 alone
    layer.merge()
    W = layer.base_layer.weight.detach().clone()
    assert torch.equal(W, plain.weight)
    dW_abs = (alpha / A.shape[0]) * B.abs() @ A.abs()
    output_bound = 4 * (A.shape[1] + A.shape[0]) * EPS * (x.abs() @ (W0.abs() + dW_abs).T + 1)
    for output in (layer(x), plain(x)):
        assert torch.all((output.detach() - unmerged).abs() <= output_bound)
    layer.unmerge()
    assert torch.all((layer.base_layer.weight - W0).abs() <= EPS * (W0.abs() + W.abs()))


def test_merge_then_unmerge_restores_w0_within_1e_6_at_trained_scale():
    """A at its initialization, B as after training (entries ~0.02), alpha 16, r 8, a 512 x 512 layer."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(512, 512), r=8, lora_alpha=16)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
    W0, x = layer.base_layer.weight.detach().clone(), torch.randn(16, 512)
    unmerged = layer(x)
    layer.merge()
    assert (layer(x) - unmerged).abs().max() <= 1e-5
    layer.unmerge()
    assert (layer.base_layer.weight - W0).abs().max() <= 1e-6


def test_merge_equals_peft_merge():
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    ours, theirs = with_weights(base, torch.randn(4, 32), torch.randn(24, 4), lora_alpha=16)
    ours.merge(), theirs.merge()
    assert torch.equal(ours.base_layer.weight, theirs.base_layer.weight)


def test_add_lora_wraps_the_targets_and_freezes_the_rest():
    model = add_lora(tiny_llama(), ["q_proj", "v_proj"], r=4, lora_alpha=8)
    assert sorted(lora_layers(model)) == sorted(f"model.layers.{i}.self_attn.{n}" for i in (0, 1) for n in ("q_proj",
                                                                                                            "v_proj"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.default.lora_" in name for name in trainable)
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in lora_layers(model).values())
    count = count_trainable(model)
    assert count.trainable == expected == 2048 and count.trainable_bytes == 4 * 2048
    assert repr(count) == f"trainable 2,048 of {count.total:,} parameters ({2048 / count.total:.2%}), 8.19 kB"
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids).logits, tiny_llama()(ids).logits)  # B = 0: the pretrained model, exactly


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_same_layers_and_counts_as_peft(targets):
    ours = add_lora(tiny_llama(), targets, r=4, lora_alpha=8)
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    peft_layers = {name.removeprefix("base_model.model.") for name, module in theirs.named_modules()
                   if isinstance(module, peft.tuners.lora.LoraLayer)}
    assert set(lora_layers(ours)) == peft_layers
    assert "lm_head" not in peft_layers  # "all-linear" leaves out the output head, in both
    assert (count_trainable(ours).trainable, count_trainable(ours).total) == theirs.get_nb_trainable_parameters()


@pytest.mark.parametrize("targets, r", [(["q_proj", "v_proj"], 4), ("all-linear", 2), (["down_proj"], 64)])
def test_count_lora_params_is_what_add_lora_adds_and_what_peft_trains(targets, r):
    model = tiny_llama()
    before = [(name, p.requires_grad) for name, p in model.named_parameters()]
    n = count_lora_params(model, targets, r)
    assert [(name, p.requires_grad) for name, p in model.named_parameters()] == before  # the model is untouched
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    assert n == count_trainable(add_lora(model, targets, r=r, lora_alpha=2 * r)).trainable
    assert n == theirs.get_nb_trainable_parameters()[0]
    assert n == count_lora_parameters(model.config, r, targets)  # lesson 02's count, from the config alone
    with pytest.raises(ValueError, match=r"r must be <= min\(in_features, out_features\) = 64"):
        count_lora_params(tiny_llama(), targets, 65)
    with pytest.raises(ValueError, match="'query' matches no linear layer"):
        count_lora_params(tiny_llama(), ["query"], r)


def test_model_logits_and_gradients_equal_peft():
    ours = add_lora(tiny_llama(), "all-linear", r=4, lora_alpha=8)
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    randomize_lora(ours)
    theirs_modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs_modules[name].lora_A["default"].weight.copy_(layer.lora_A)
            theirs_modules[name].lora_B["default"].weight.copy_(layer.lora_B)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    loss_ours, loss_theirs = ours(ids, labels=ids), theirs(input_ids=ids, labels=ids)
    assert (loss_ours.logits - loss_theirs.logits).abs().max() <= 1e-6
    loss_ours.loss.backward(), loss_theirs.loss.backward()
    for name, layer in lora_layers(ours).items():
        assert (layer.lora_A.grad - theirs_modules[name].lora_A["default"].weight.grad).abs().max() <= 1e-6
        assert (layer.lora_B.grad - theirs_modules[name].lora_B["default"].weight.grad).abs().max() <= 1e-6


def test_two_adapters_on_one_base_switch_and_disable():
    base, model = tiny_llama(), add_lora(tiny_llama(), ["q_proj", "v_proj"], r=4, lora_alpha=8, adapter_name="qa")
    add_lora(model, "all-linear", r=2, lora_alpha=4, adapter_name="style")
    assert adapter_names(model) == ["qa", "style"] and len(lora_layers(model)) == 14
    randomize_lora(model)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    style = model(ids).logits  # the newest adapter is active
    assert count_trainable(model).trainable == 2 * 2 * (4 * 128 + 2 * 192 + 192)
    set_adapter(model, "qa")
    qa = model(ids).logits
    assert count_trainable(model).trainable == 2048  # only the active adapter trains
    with disable_adapter(model):
        assert torch.equal(model(ids).logits, base(ids).logits)
    assert torch.equal(model(ids).logits, qa)  # the active adapter is back after the with block
    assert (qa - style).abs().max() > 1e-3 and (qa - base(ids).logits).abs().max() > 1e-3
    set_adapter(model, "style")
    assert torch.equal(model(ids).logits, style)
    set_adapter(model, None)
    assert torch.equal(model(ids).logits, base(ids).logits) and count_trainable(model).trainable == 0


def test_model_merge_unmerge_and_unload():
    model = add_lora(tiny_llama(), "all-linear", r=4, lora_alpha=8)
    randomize_lora(model)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    W0 = {name: layer.base_layer.weight.detach().clone() for name, layer in lora_layers(model).items()}
    expected = model(ids).logits
    merge_lora(model)
    assert (model(ids).logits - expected).abs().max() <= 1e-5
    with pytest.raises(RuntimeError, match="merged into the base weights; call unmerge_lora"):
        set_adapter(model, "default")
    unmerge_lora(model)
    assert max((layer.base_layer.weight - W0[name]).abs().max() for name, layer in lora_layers(model).items()) <= 1e-6
    plain = merge_and_unload(model)
    assert not lora_layers(plain) and linear_layer_names(plain) == linear_layer_names(tiny_llama())
    assert (plain(ids).logits - expected).abs().max() <= 1e-5


def test_layers_added_to_an_eval_model_do_not_drop_out():
    model = add_lora(tiny_llama(), r=4, lora_alpha=8, lora_dropout=0.5)
    randomize_lora(model)
    assert not any(module.training for module in model.modules())
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout on A's input in training mode


def test_linear_layer_names_skip_the_base_inside_a_lora_layer():
    model = add_lora(tiny_llama(), ["q_proj"], r=2, lora_alpha=2)
    names = linear_layer_names(model)
    assert len(names) == 15 and not any(name.endswith("base_layer") for name in names)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"r": 0}, ValueError, "r must be >= 1, got r=0"),
        ({"r": 2.0}, TypeError, "r must be an int"),
        ({"r": 65}, ValueError, r"r must be <= min\(in_features, out_features\) = 64 for model.layers.0.*got r=65"),
        ({"lora_alpha": 0}, ValueError, "alpha must be a positive number, got lora_alpha=0"),
        ({"lora_alpha": -8}, ValueError, "lora_alpha=-8"),
        ({"lora_dropout": 1.0}, ValueError, r"dropout must be a probability in \[0, 1\), got lora_dropout=1.0"),
        ({"lora_dropout": -0.1}, ValueError, "lora_dropout=-0.1"),
        ({"target_modules": ["q_proj", "query"]}, ValueError,
         r"'query' matches no linear layer of LlamaForCausalLM; its linear layers are: q_proj \(x2\), k_proj \(x2\), "
         r"v_proj \(x2\), o_proj \(x2\), gate_proj \(x2\), up_proj \(x2\), down_proj \(x2\), lm_head"),
        ({"target_modules": ["embed_tokens"]}, ValueError, "'embed_tokens' matches no linear layer"),
        ({"target_modules": []}, TypeError, "non-empty list of layer names"),
        ({"target_modules": 3}, TypeError, "target_modules must be 'all-linear' or"),
        ({"adapter_name": "my adapter"}, ValueError, "Python identifier"),
    ],
)
def test_bad_arguments_raise_clear_errors_and_leave_the_model_alone(kwargs, error, message):
    model = tiny_llama()
    with pytest.raises(error, match=message):
        add_lora(model, **kwargs)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_bad_layer_and_adapter_use_raise_clear_errors():
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear or a transformers Conv1D, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=1, lora_alpha=1)
    with pytest.raises(ValueError, match=r"min\(in_features, out_features\) = 3"):
        LoRALinear(nn.Linear(8, 3), r=4, lora_alpha=1)
    layer = LoRALinear(nn.Linear(8, 8), r=2, lora_alpha=4)
    with pytest.raises(RuntimeError, match="nothing is merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="call unmerge"):
        layer.set_adapter(None)
    model = add_lora(tiny_llama(), r=2, lora_alpha=4)
    with pytest.raises(ValueError, match=r"already has an adapter named 'default'; adapters: \['default'\]"):
        add_lora(model, r=2, lora_alpha=4)
    with pytest.raises(ValueError, match=r"no adapter named 'other'; the model has \['default'\]"):
        set_adapter(model, "other")
    with pytest.raises(ValueError, match="no LoRA layers; call add_lora"):
        set_adapter(tiny_llama(), "default")
    with pytest.raises(ValueError, match="no LoRA layers; call add_lora"), disable_adapter(tiny_llama()):
        pass
    with pytest.raises(ValueError, match="Embedding has no linear layer besides its output head"):
        add_lora(nn.Embedding(10, 4), "all-linear")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        count_trainable("model")
    with pytest.raises(ValueError, match="has no parameters"):
        count_trainable(nn.ReLU())
