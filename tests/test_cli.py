"""qlora_lessons.cli: the qlora-lessons command (also python -m qlora_lessons); a package import that stays light."""

import json
import os
import subprocess
import sys

import pytest

from qlora_lessons import cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "qlora_lessons", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_import_loads_neither_transformers_nor_matplotlib():
    code = ("import sys, qlora_lessons; "
            "print(sorted(m for m in ('transformers', 'matplotlib', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_names_still_resolve_lazily():
    import qlora_lessons

    assert qlora_lessons.estimate_training_memory.__module__ == "qlora_lessons.memory_estimate"
    assert "trace_training_memory" in dir(qlora_lessons)
    with pytest.raises(AttributeError, match="no_such_name"):
        qlora_lessons.no_such_name  # noqa: B018


@pytest.mark.parametrize("command", [[], ["env"], ["memory"], ["presets"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0 and "usage: qlora-lessons" in capsys.readouterr().out


@pytest.mark.parametrize("args, argument", [
    (["memory", "llama-8b", "--method", "qlora"], "MODEL 'llama-8b'"),
    (["memory", "/no/such/config.json", "--method", "full"], "no such config.json"),
    (["memory", "llama-7b", "--method", "qlor"], "--method"),
    (["memory", "llama-7b", "--method", "lora", "--r", "0"], "r"),
    (["memory", "llama-7b", "--method", "lora", "--target-modules", "c_attn"], "target_modules"),
    (["memory", "llama-7b", "--method", "full", "--gpu-gib", "-1"], "--gpu-gib"),
    (["memory", "Qwen/Qwen2.5-0.5B", "--method", "full"], "local config.json"),
])
def test_bad_input_exits_2_with_one_line_naming_the_argument(args, argument, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and argument in error and error.count("\n") == 1, error


def test_json_parts_at_the_peak_sum_to_the_peak(tmp_path, capsys):
    from qlora_lessons.memory_models import load_config

    (tmp_path / "config.json").write_text(json.dumps(load_config("qwen2.5-0.5b")))
    cli.main(["memory", str(tmp_path), "--method", "qlora", "--seq-len", "1024", "--gradient-checkpointing", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == 494_032_768 and report["model_type"] == "qwen2"
    estimate = report["estimate"]
    assert sum(estimate["at_peak_bytes"].values()) == report["peak_bytes"] == estimate["peak_bytes"]
    assert all(isinstance(estimate[f"{part}_bytes"], int) for part in ("weights", "gradients", "activations"))
    assert list(report["fits_gib"]) == ["8", "12", "16", "24", "40", "48", "80"] and report["fits_gib"]["24"]
    assert report["largest_batch_size"] >= 1 and report["longest_seq_len"] >= 1024


def test_largest_batch_and_sequence_are_the_edge_of_the_budget():
    from qlora_lessons import estimate_training_memory

    args = cli._parser().parse_args(["memory", "llama-2-7b", "--method", "qlora", "--gpu-gib", "12"])
    report = cli.memory_report(args)
    settings = cli._settings(args)
    batch, length = report["largest_batch_size"], report["longest_seq_len"]
    assert estimate_training_memory("llama-2-7b", **{**settings, "batch_size": batch}).total <= 12 * 2**30
    assert estimate_training_memory("llama-2-7b", **{**settings, "batch_size": batch + 1}).total > 12 * 2**30
    assert estimate_training_memory("llama-2-7b", **{**settings, "seq_len": length + 1}).total > 12 * 2**30


def test_the_table_and_the_trace(capsys):
    cli.main(["memory", "qwen2.5-0.5b", "--method", "lora", "--seq-len", "128", "--trace"])
    out = capsys.readouterr().out
    assert "est/trace" in out and "peak" in out and "fits on: 8 GiB yes" in out


def test_module_command_runs_the_memory_subcommand():
    result = _run("memory", "llama-3.1-8b", "--method", "qlora", "--r", "16", "--seq-len", "2048",
                  "--gradient-checkpointing")
    assert result.returncode == 0, result.stderr
    assert "8,030,261,248 parameters" in result.stdout and "largest batch" in result.stdout


@pytest.mark.parametrize("flags, knobs", [
    (["--method", "full", "--dtype", "float32", "--optimizer-impl", "foreach"],
     dict(method="full", optimizer_impl="foreach")),
    (["--method", "full", "--optimizer-impl", "fused"], dict(method="full", optimizer_impl="fused")),
    (["--method", "qlora", "--adapter-dtype", "float32", "--kbit-casts", "--optimizer", "paged_adamw_32bit"],
     dict(method="qlora", adapter_dtype="float32", kbit_casts=True, optimizer="adamw32bit")),
    (["--method", "lora", "--attention", "eager", "--seq-len", "2048"], dict(method="lora", attention="eager",
                                                                            seq_len=2048)),
    (["--method", "full", "--precision", "autocast"], dict(method="full", precision="autocast")),
])
def test_stack_flags_reach_the_estimator(flags, knobs, capsys):
    import torch

    from qlora_lessons import estimate_training_memory

    cli.main(["memory", "llama-7b", *flags, "--r", "16", "--json"])
    report = json.loads(capsys.readouterr().out)
    knobs = {"weight_dtype": torch.float32 if "float32" in flags[:4] and "--dtype" in flags else torch.bfloat16,
             "r": 16, "target_modules": "all-linear", **knobs}
    if "adapter_dtype" in knobs:
        knobs["adapter_dtype"] = getattr(torch, knobs["adapter_dtype"])
    assert report["peak_bytes"] == estimate_training_memory("llama-7b", **knobs).total
    default = json.loads((cli.main(["memory", "llama-7b", "--method", knobs["method"], "--r", "16", "--json"]),
                          capsys.readouterr().out)[1])
    assert report["peak_bytes"] != default["peak_bytes"]  # each flag moves the number


def test_stack_flags_are_traced_too(capsys):
    cli.main(["memory", "qwen2.5-0.5b", "--method", "full", "--attention", "eager", "--optimizer-impl", "foreach",
              "--seq-len", "256", "--trace", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["peak_bytes"] == pytest.approx(report["trace"]["peak_bytes"], rel=0.02)
    assert report["settings"]["attention"] == "eager" and report["settings"]["optimizer_impl"] == "foreach"


def test_the_table_names_the_stack(capsys):
    cli.main(["memory", "llama-7b", "--method", "qlora", "--adapter-dtype", "float32", "--kbit-casts"])
    assert "stack: AdamW for-loop, sdpa attention, float32 adapters, prepare_model_for_kbit_training casts" in (
        capsys.readouterr().out)


def test_a_stack_flag_that_does_not_fit_the_method_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["memory", "llama-7b", "--method", "lora", "--kbit-casts"])
    assert exit_.value.code == 2 and "kbit_casts" in capsys.readouterr().err
