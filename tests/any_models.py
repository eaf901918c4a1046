"""Tiny configs of every family the memory modules support (hidden 64, 2 layers, vocabulary 128)."""

from __future__ import annotations

import transformers

_BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def tiny_configs() -> dict[str, transformers.PretrainedConfig]:
    """One small config per family: GQA everywhere it exists, head_dim != hidden / heads where a family allows it."""
    return {
        "llama": transformers.LlamaConfig(**_BASE),
        "llama-tied-biases": transformers.LlamaConfig(**_BASE, tie_word_embeddings=True, attention_bias=True,
                                                      mlp_bias=True, head_dim=32),
        "mistral": transformers.MistralConfig(**_BASE),
        "qwen2": transformers.Qwen2Config(**_BASE),
        "qwen3": transformers.Qwen3Config(**_BASE, head_dim=32),
        "gemma2": transformers.Gemma2Config(**_BASE, head_dim=32),
        "gemma3_text": transformers.Gemma3TextConfig(**_BASE, head_dim=32),
        "phi3": transformers.Phi3Config(**_BASE, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "opt": transformers.OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                                      num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=512,
                                      pad_token_id=1, bos_token_id=2, eos_token_id=2),
        "gpt2": transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                        bos_token_id=0, eos_token_id=0),
        "mixtral": transformers.MixtralConfig(**_BASE, num_local_experts=4, num_experts_per_tok=2),
        "qwen3_moe": transformers.Qwen3MoeConfig(**_BASE, num_experts=4, num_experts_per_tok=2,
                                                 moe_intermediate_size=48, head_dim=32),
    }
