"""4-bit codes judged on a model, not on its weights: how far each code moves the model's predictions.

Weight error (MSE) is a proxy. What matters is what the quantized model predicts. The QLoRA paper
(Dettmers et al. 2023, section 4, Table 2) ranks the codes by the perplexity of the quantized model;
lesson 05 does the same on the course model, in a few seconds on a CPU:

- ``roundtrip_weight(w, method)``: w quantized with one of ``METHODS`` and rebuilt (fake quantization);
- ``quantized_linear_weights(model, method)``: a context manager that puts the rebuilt weights into every
  linear layer (the output head tied to the embedding stays, as QLoRA keeps it in 16 bits) and restores
  the originals on exit;
- ``measure_codes_on_model(model, tokenizer, texts)``: for each method, the mean per-token KL divergence
  of the quantized model's next-token distribution from the original's, and the loss on the texts.

Left out: double quantization (it changes the error by well under 1%, lesson 06) and perplexity on a
public benchmark (nothing can be downloaded offline).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qlora_lessons.nf4 import QUANT_TYPES, dequantize_4bit, quantize_4bit
from qlora_lessons.quant_codes import dequantize_int4_asym, quantize_int4_asym

METHODS = (*QUANT_TYPES, "int4_asym")  # nf4, fp4, int4 (symmetric absmax) and asymmetric int4


def roundtrip_weight(w: torch.Tensor, method: str, blocksize: int = 64) -> torch.Tensor:
    """w quantized blockwise with ``method`` and rebuilt, in w's dtype and shape.

    Equation: nf4 / fp4 / int4: code[q] * absmax_b (``quantize_4bit``); int4_asym: q * scale_b + minimum_b.
    Shapes: w (out, in) -> (out, in). Example: ``roundtrip_weight(torch.randn(8, 64), "nf4")``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "int4_asym":
        return dequantize_int4_asym(*quantize_int4_asym(w, blocksize), tuple(w.shape)).to(w.dtype)
    return dequantize_4bit(*quantize_4bit(w, blocksize=blocksize, quant_type=method))


def quantizable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The model's ``nn.Linear`` layers except an output head that shares its weight with the embedding."""
    output_embeddings = getattr(model, "get_output_embeddings", None)  # a transformers model's method
    head = output_embeddings() if output_embeddings is not None else None
    tied = head.weight if head is not None else None
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight is not tied}


@contextmanager
def quantized_linear_weights(model: torch.nn.Module, method: str, blocksize: int = 64) -> Iterator[int]:
    """Inside the ``with`` block every quantizable linear weight is its 4-bit round trip; yields how many.

    Example: ``with quantized_linear_weights(model, "fp4") as n: model(ids)`` -> n = 28 on the course model.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    originals = {}
    try:
        with torch.no_grad():
            for name, layer in quantizable_linears(model).items():
                originals[name] = layer.weight.detach().clone()
                layer.weight.copy_(roundtrip_weight(layer.weight.detach(), method, blocksize))
        yield len(originals)
    finally:
        with torch.no_grad():
            layers = quantizable_linears(model)
            for name, weight in originals.items():
                layers[name].weight.copy_(weight)


@dataclass(frozen=True)
class CodeOnModel:
    """One code on one model: mean KL(original || quantized) per token and the loss before and after."""

    method: str
    kl: float
    loss: float
    loss_original: float
    tokens: int

    def __repr__(self) -> str:
        return (f"CodeOnModel({self.method}: KL {self.kl:.2e} nats/token, loss {self.loss:.4f} "
                f"(original {self.loss_original:.4f}, {self.loss - self.loss_original:+.2e}), {self.tokens:,} tokens)")


def _log_probs(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**batch).logits.float().log_softmax(-1).cpu() for batch in batches]


def _loss(log_probs: list[torch.Tensor], batches) -> float:
    total, count = 0.0, 0
    for lp, batch in zip(log_probs, batches, strict=True):
        labels, keep = batch["input_ids"][:, 1:].cpu(), batch["attention_mask"][:, 1:].cpu().bool()
        total += float(-lp[:, :-1].gather(-1, labels.unsqueeze(-1)).squeeze(-1)[keep].double().sum())
        count += int(keep.sum())
    return total / count


def measure_codes_on_model(model, tokenizer, texts: Sequence[str], methods: Sequence[str] = METHODS,
                           blocksize: int = 64, batch_size: int = 128) -> dict[str, CodeOnModel]:
    """For each method: KL of the quantized model's next-token distribution from the original's, and loss.

    Equation: KL = mean over real tokens t of sum_v p(v | t) (log p(v | t) - log p_q(v | t)), p the
    original model, p_q the model with 4-bit round-tripped linear weights; loss = mean -log p_q(next token).
    Shapes: texts (n,) strings -> {method: CodeOnModel}.
    Example: ``measure_codes_on_model(model, tokenizer, docs[:256])["nf4"].kl`` -> about 4e-4 on the course model.
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty sequence of strings")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {METHODS}, got {unknown}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        batches = [{k: v.to(device) for k, v in tokenizer(list(texts[i:i + batch_size]), return_tensors="pt",
                                                          padding=True).items() if k in ("input_ids", "attention_mask")}
                   for i in range(0, len(texts), batch_size)]
    finally:
        tokenizer.padding_side = side
    original = _log_probs(model, batches)
    loss_original = _loss(original, batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    results = {}
    for method in methods:
        with quantized_linear_weights(model, method, blocksize):
            quantized = _log_probs(model, batches)
        kl = sum(float((p.exp() * (p - q)).sum(-1)[b["attention_mask"].cpu().bool()].double().sum())
                 for p, q, b in zip(original, quantized, batches, strict=True)) / tokens
        results[method] = CodeOnModel(method, kl, _loss(quantized, batches), loss_original, tokens)
    return results
