"""lora_experts: LoRA on 2-D and 3-D weight tensors (MoE experts, routers) as peft's ParamWrapper computes it."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import ParamWrapper

from qlora_lessons.lora_experts import LoRAParameter, add_parameter_lora, parameter_adapters, resolve_parameters

from tiny_models import tiny_llama


def test_each_expert_gets_its_own_a_and_b_in_peft_layout():
    adapter = LoRAParameter((3, 10, 6), r=2, lora_alpha=4)  # 3 experts of (out 10, in 6)
    assert adapter.lora_A.shape == (6, 6) and adapter.lora_B.shape == (10, 6)
    with torch.no_grad():
        adapter.lora_B.copy_(torch.randn(10, 6, generator=torch.Generator().manual_seed(0)))
    delta = adapter.delta_weight()
    for e in range(3):  # A_e: rows e r .. (e + 1) r; B_e: columns e, e + E, ... (peft reshapes B to (out, r, E))
        expected = adapter.lora_B[:, e::3] @ adapter.lora_A[2 * e:2 * e + 2] * adapter.scaling
        torch.testing.assert_close(delta[e], expected)


def test_same_delta_as_peft_param_wrapper():
    import peft

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 12, 8))

        def forward(self, x):
            return torch.einsum("eoi,bi->beo", self.w, x)

    model = torch.nn.Sequential(Experts())
    theirs = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=6, target_modules=[], target_parameters=["w"]))
    wrapper = next(m for m in theirs.modules() if isinstance(m, ParamWrapper))
    ours = LoRAParameter((4, 12, 8), r=2, lora_alpha=6)
    with torch.no_grad():
        wrapper.lora_B["default"].weight.normal_()
        ours.lora_A.copy_(wrapper.lora_A["default"].weight), ours.lora_B.copy_(wrapper.lora_B["default"].weight)
    torch.testing.assert_close(ours.delta_weight(), wrapper.get_delta_weight("default"))


def test_a_2d_tensor_is_one_matrix_and_bad_targets_raise():
    model = tiny_llama()
    names = resolve_parameters(model, ["q_proj.weight"])
    assert names == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"]
    add_parameter_lora(model, names, r=2, lora_alpha=4)
    assert set(parameter_adapters(model)) == set(names)
    with pytest.raises(ValueError, match="matches no parameter"):
        resolve_parameters(tiny_llama(), ["experts.down_proj"])
    with pytest.raises(TypeError, match="target_parameters must be a non-empty list"):
        resolve_parameters(tiny_llama(), "down_proj")
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        LoRAParameter((64,), r=2, lora_alpha=4)
    with pytest.raises(ValueError, match="r <= min"):
        add_parameter_lora(tiny_llama(), ["model.norm.weight"], r=2, lora_alpha=4)
