"""LoRALinear against peft's LoRA layer: agreement (max abs differences) and forward time, in one run.

Run by hand: ``.venv/bin/python benchmarks/bench_lora.py [--device cuda]``. Prints
- the max abs differences to peft (forward, grad A, grad B) on a (1024 -> 1024, r = 16) layer in float32
  (``--features 4096`` on a GPU),
- the logits difference after ``save_as_peft`` -> ``peft.PeftModel.from_pretrained`` on a tiny Llama,
- the error of merge then unmerge on W0,
- forward times: ours / peft (target: <= 1.1) and merged / unmerged (target: < 1, merging removes two matmuls).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections import OrderedDict

import peft
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from qlora_lessons.lora import LoRALinear, add_lora, lora_layers
from qlora_lessons.lora_peft import save_as_peft


def seconds_per_call(fns: list, x: torch.Tensor, repeats: int, rounds: int = 7) -> list[float]:
    """For each function, the fastest of ``rounds`` averages over ``repeats`` calls; the functions take turns in
    every round, so that load from other processes falls on all of them alike."""
    best = [float("inf")] * len(fns)
    with torch.no_grad():
        for fn in fns:
            for _ in range(3):
                fn(x)
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                if x.is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(repeats):
                    fn(x)
                if x.is_cuda:
                    torch.cuda.synchronize()
                best[i] = min(best[i], (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, r, alpha = args.features, 16, 32
    base = nn.Linear(n, n).to(args.device)
    ours = LoRALinear(copy.deepcopy(base), r, alpha)
    theirs = peft.get_peft_model(nn.Sequential(OrderedDict(proj=copy.deepcopy(base))),
                                 peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"])).base_model.model.proj
    with torch.no_grad():
        ours.lora_B.normal_(std=0.02)
        theirs.lora_A["default"].weight.copy_(ours.lora_A), theirs.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(8, 128, n, device=args.device)
    out_ours, out_theirs = ours(x), theirs(x)
    upstream = torch.randn_like(out_ours)
    (out_ours * upstream).sum().backward(), (out_theirs * upstream).sum().backward()
    print(f"layer {n} -> {n}, r={r}, float32, x {tuple(x.shape)}, device {args.device}")
    print(f"  forward  max |ours - peft| = {(out_ours - out_theirs).abs().max():.3g}")
    print(f"  grad A   max |ours - peft| = {(ours.lora_A.grad - theirs.lora_A['default'].weight.grad).abs().max():.3g}")
    print(f"  grad B   max |ours - peft| = {(ours.lora_B.grad - theirs.lora_B['default'].weight.grad).abs().max():.3g}")

    W0 = ours.base_layer.weight.detach().clone()
    merged = ours.merged_linear()  # the same layer after merging: one plain matmul
    t_unmerged, t_peft, t_merged = seconds_per_call([ours, theirs, merged], x, args.repeats)
    ours.merge()
    merged_out = ours(x)
    ours.unmerge()
    print(f"  merged vs unmerged output  max abs diff = {(merged_out - out_ours).abs().max():.3g}")
    print(f"  merge then unmerge: max |W0' - W0| = {(ours.base_layer.weight - W0).abs().max():.3g}")
    print(f"  forward time ours / peft       = {t_unmerged / t_peft:.2f}  ({t_unmerged * 1e3:.2f} ms)")
    print(f"  forward time merged / unmerged = {t_merged / t_unmerged:.2f}  ({t_merged * 1e3:.2f} ms)")

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100, max_position_embeddings=64)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    model = add_lora(copy.deepcopy(llama), "all-linear", r=8, lora_alpha=16)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    ids = torch.randint(0, 100, (4, 32))
    with tempfile.TemporaryDirectory() as path:
        save_as_peft(model, path)
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(llama), path)
        difference = (loaded(input_ids=ids).logits - model(ids).logits).abs().max()
    print(f"tiny Llama, all-linear r=8: save_as_peft -> PeftModel.from_pretrained, max |logits diff| {difference:.3g}")


if __name__ == "__main__":
    main()
