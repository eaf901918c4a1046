"""renamed_arguments: peft's names for the LoRA settings everywhere, the old names for one release with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from qlora_lessons import add_lora, count_trainable, estimate_training_memory, prepare_qlora
from qlora_lessons.cli import main
from qlora_lessons.lora import LoRALinear
from qlora_lessons.memory_layout import count_lora_parameters
from qlora_lessons.qlora import QLoRALinear
from qlora_lessons.renamed_arguments import LORA_RENAMES, rename_settings, renamed_arguments

from tiny_models import tiny_llama


@renamed_arguments(alpha="lora_alpha")
def scaled(r: int, lora_alpha: float = 16) -> float:
    """lora_alpha / r."""
    return lora_alpha / r


def test_old_name_works_with_a_deprecation_warning_that_names_the_new_one():
    with pytest.warns(DeprecationWarning, match=r"scaled\(alpha=\.\.\.\) is deprecated; use lora_alpha="):
        assert scaled(4, alpha=8) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name: no warning
        assert scaled(4, lora_alpha=8) == scaled(4, 8) == 2.0
    assert "``alpha`` -> ``lora_alpha``" in scaled.__doc__ and scaled.__name__ == "scaled"


def test_both_names_at_once_is_an_error_and_bad_declarations_are_refused():
    with pytest.raises(TypeError, match="got both alpha= .* and lora_alpha="):
        scaled(4, alpha=8, lora_alpha=8)
    with pytest.raises(ValueError, match="old=new identifier pairs"):
        renamed_arguments(alpha="lora alpha")
    assert rename_settings({"lora_r": 8, "seq_len": 1}, LORA_RENAMES, "f") == {"r": 8, "seq_len": 1}


def test_every_function_taking_lora_settings_accepts_the_old_names_for_now():
    """The old names give the same result as peft's names, each with a DeprecationWarning."""
    pairs = [
        (lambda: count_trainable(add_lora(tiny_llama(), r=2, alpha=4, dropout=0.1, targets=["q_proj"])).trainable,
         lambda: count_trainable(add_lora(tiny_llama(), r=2, lora_alpha=4, lora_dropout=0.1,
                                          target_modules=["q_proj"])).trainable),
        (lambda: count_trainable(prepare_qlora(tiny_llama(), r=2, alpha=4, targets=["v_proj"])).trainable,
         lambda: count_trainable(prepare_qlora(tiny_llama(), r=2, lora_alpha=4, target_modules=["v_proj"])).trainable),
        (lambda: LoRALinear(nn.Linear(8, 8), r=2, alpha=4, dropout=0.5).scaling,
         lambda: LoRALinear(nn.Linear(8, 8), r=2, lora_alpha=4, lora_dropout=0.5).scaling),
        (lambda: QLoRALinear.from_linear(nn.Linear(64, 64), r=2, alpha=6).scaling,
         lambda: QLoRALinear.from_linear(nn.Linear(64, 64), r=2, lora_alpha=6).scaling),
        (lambda: estimate_training_memory("llama-7b", method="qlora", weight_dtype=torch.bfloat16, lora_r=16,
                                          lora_targets="all-linear").total,
         lambda: estimate_training_memory("llama-7b", method="qlora", weight_dtype=torch.bfloat16, r=16,
                                          target_modules="all-linear").total),
        (lambda: count_lora_parameters(tiny_llama().config, 2, targets=("q_proj",)),
         lambda: count_lora_parameters(tiny_llama().config, 2, target_modules=("q_proj",))),
    ]
    for old, new in pairs:
        with pytest.warns(DeprecationWarning, match="is deprecated; use"):
            before = old()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            assert new() == before


def test_cli_takes_peft_names_and_the_old_flags_with_a_warning(capsys):
    main(["memory", "llama-7b", "--method", "lora", "--r", "8", "--target-modules", "q_proj,v_proj", "--json"])
    new = capsys.readouterr().out
    with pytest.warns(DeprecationWarning, match="--lora-r is deprecated; use --r"):
        main(["memory", "llama-7b", "--method", "lora", "--lora-r", "8", "--target-modules", "q_proj,v_proj",
              "--json"])
    assert capsys.readouterr().out == new
