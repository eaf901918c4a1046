"""A tiny randomly initialized Llama for the library tests: the course model's layer names, built in milliseconds."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=100, max_position_embeddings=64)


def tiny_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 64, MLP 128, vocab 100) in eval mode; ``config`` overrides ``TINY_CONFIG``.

    Example: ``tiny_llama(vocab_size=128)`` has 7 linear layers of 4,096 to 8,192 weights in each of its 2 blocks.
    """
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_CONFIG, **config})).eval()
