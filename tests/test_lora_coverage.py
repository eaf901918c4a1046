"""lora_coverage: matrices that are not linear layers (MoE experts, routers) are named, never skipped silently."""

from __future__ import annotations

import math
import warnings

import pytest
from transformers import AutoModelForCausalLM

from qlora_lessons.lora_coverage import LeftOutWarning, describe_matrices, matrices_outside_linear_layers, warn_left_out

from any_models import tiny_configs
from tiny_models import tiny_llama


def test_a_dense_model_has_none_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeftOutWarning)
        assert warn_left_out(tiny_llama(), "x adapts") == {} == matrices_outside_linear_layers(tiny_llama())


def test_a_mixtral_has_its_experts_and_router_named_with_their_share():
    model = AutoModelForCausalLM.from_config(tiny_configs()["mixtral"])
    found = matrices_outside_linear_layers(model)
    assert found["model.layers.0.mlp.experts.gate_up_proj"] == (4, 192, 64) and len(found) == 6
    assert describe_matrices(found) == ("gate.weight (4, 64) x2, experts.gate_up_proj (4, 192, 64) x2, "
                                       "experts.down_proj (4, 64, 96) x2")
    share = sum(math.prod(shape) for shape in found.values()) / sum(p.numel() for p in model.parameters())
    with pytest.warns(LeftOutWarning, match=rf"left out: 6 weight matrices \({share:.1%} of the parameters\)"):
        warn_left_out(model, "x adapts")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeftOutWarning)
        warn_left_out(model, "x adapts", covered=list(found))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        matrices_outside_linear_layers("model")
