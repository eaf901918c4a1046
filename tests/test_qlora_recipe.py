"""qlora_recipe: the paper's settings beside a run's, and the fields of a BitsAndBytesConfig."""

import pytest
import torch
from transformers import BitsAndBytesConfig

from qlora_lessons.models import quantization_config
from qlora_lessons.qlora_recipe import PAPER_RECIPE, describe_4bit_config, recipe_table


def test_a_bare_4bit_config_is_not_qlora():
    assert describe_4bit_config(BitsAndBytesConfig(load_in_4bit=True)) == {
        "load_in_4bit": True, "quant_type": "fp4", "double_quant": False, "compute_dtype": torch.float32}
    assert describe_4bit_config(quantization_config("nf4", True)) == {
        "load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": torch.bfloat16}


def test_the_recipe_holds_the_papers_values():
    assert PAPER_RECIPE["r"][:2] == (64, 64) and PAPER_RECIPE["lora_alpha"][:2] == (16, 16)
    assert PAPER_RECIPE["lora_dropout"][:2] == (0.1, 0.05) and PAPER_RECIPE["lr"][:2] == (2e-4, 1e-4)
    assert PAPER_RECIPE["optimizer"][0] == "paged_adamw_32bit" and PAPER_RECIPE["max_grad_norm"][0] == 0.3


def test_the_table_gives_a_reason_only_where_the_run_differs():
    table = recipe_table({"r": 2, "lora_alpha": 16, "lr": 2e-4}, {"r": "small model", "lora_alpha": "unused",
                                                                   "lr": "unused"})
    lines = {line.split()[0]: line for line in table.splitlines()}
    assert lines["r"].rstrip().endswith("small model")
    assert "unused" not in lines["lora_alpha"] and "unused" not in lines["lr"]
    assert lines["max_grad_norm"].split()[3] == "-"  # not given: shown as "-"
    assert len(table.splitlines()) == len(PAPER_RECIPE) + 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank"):
        recipe_table({"rank": 2})
    with pytest.raises(TypeError, match="course"):
        recipe_table([("r", 2)])
    with pytest.raises(TypeError, match="BitsAndBytesConfig"):
        describe_4bit_config(object())
