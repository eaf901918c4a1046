"""Memory of fine-tuning, part 0: any decoder-only causal LM as a shape, from a preset, a config.json or a config.

``load_config`` turns what a learner has (a preset name such as ``"llama-3.1-8b"``, a dict, a path to a
``config.json`` or a model folder, a ``transformers.PretrainedConfig``, or a hub id when online) into the
plain dict of a ``config.json``; ``model_shape`` reads from it the numbers every count and estimate needs
(``ModelShape``). Nothing here imports transformers, so the command line answers in a second.

The published shapes (``PRESETS``) are copied from each model's ``config.json`` on the Hugging Face hub,
named in ``PRESET_SOURCES``. Left out: encoder-decoder models, vision towers of multimodal configs (a
``text_config`` inside one is used), and shared experts of MoE families other than Mixtral and Qwen3-MoE.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

_LLAMA1 = dict(model_type="llama", vocab_size=32000, tie_word_embeddings=False)
_L3 = dict(model_type="llama", vocab_size=128256, num_key_value_heads=8, tie_word_embeddings=False,
           max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0)
_QWEN = dict(model_type="qwen2", max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0)
_GEMMA2 = dict(model_type="gemma2", vocab_size=256000, head_dim=256, tie_word_embeddings=True,
               max_position_embeddings=8192, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
               final_logit_softcapping=30.0, attn_logit_softcapping=50.0, sliding_window=4096)


def _llama(hidden, intermediate, layers, heads, kv_heads, positions, eps) -> dict:
    return dict(_LLAMA1, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
                rms_norm_eps=eps)


PRESETS: dict[str, dict] = {
    "llama-7b": _llama(4096, 11008, 32, 32, 32, 2048, 1e-6),
    "llama-13b": _llama(5120, 13824, 40, 40, 40, 2048, 1e-6),
    "llama-33b": _llama(6656, 17920, 60, 52, 52, 2048, 1e-6),
    "llama-65b": _llama(8192, 22016, 80, 64, 64, 2048, 1e-5),
    "llama-2-7b": _llama(4096, 11008, 32, 32, 32, 4096, 1e-5),
    "llama-2-13b": _llama(5120, 13824, 40, 40, 40, 4096, 1e-5),
    "llama-2-70b": _llama(8192, 28672, 80, 64, 8, 4096, 1e-5),
    "llama-3.1-8b": dict(_L3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
    "llama-3.1-70b": dict(_L3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64),
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, sliding_window=4096,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "mixtral-8x7b": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                         num_experts_per_tok=2, max_position_embeddings=32768, rms_norm_eps=1e-5,
                         rope_theta=1000000.0, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(_QWEN, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-72b": dict(_QWEN, vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "gemma-2-2b": dict(_GEMMA2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4),
    "gemma-2-9b": dict(_GEMMA2, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                       num_attention_heads=16, num_key_value_heads=8),
    "phi-3-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, pad_token_id=32000,
                       bos_token_id=1, eos_token_id=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False),
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                 tie_word_embeddings=True, activation_function="gelu_new"),
    "opt-1.3b": dict(model_type="opt", vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                     num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048,
                     do_layer_norm_before=True, pad_token_id=1, bos_token_id=2, eos_token_id=2),
}
_HUB = "https://huggingface.co/{}/blob/main/config.json"
PRESET_SOURCES: dict[str, str] = {
    **{f"llama-{s}": _HUB.format(f"huggyllama/llama-{s.replace('33', '30')}") for s in ("7b", "13b", "33b", "65b")},
    **{f"llama-2-{s}": _HUB.format(f"meta-llama/Llama-2-{s}-hf") for s in ("7b", "13b", "70b")},
    "llama-3.1-8b": _HUB.format("meta-llama/Llama-3.1-8B"), "llama-3.1-70b": _HUB.format("meta-llama/Llama-3.1-70B"),
    "mistral-7b": _HUB.format("mistralai/Mistral-7B-v0.1"), "mixtral-8x7b": _HUB.format("mistralai/Mixtral-8x7B-v0.1"),
    "qwen2.5-0.5b": _HUB.format("Qwen/Qwen2.5-0.5B"), "qwen2.5-7b": _HUB.format("Qwen/Qwen2.5-7B"),
    "qwen2.5-72b": _HUB.format("Qwen/Qwen2.5-72B"), "qwen3-8b": _HUB.format("Qwen/Qwen3-8B"),
    "gemma-2-2b": _HUB.format("google/gemma-2-2b"), "gemma-2-9b": _HUB.format("google/gemma-2-9b"),
    "phi-3-mini": _HUB.format("microsoft/Phi-3-mini-4k-instruct"),
    "gpt2": _HUB.format("openai-community/gpt2"), "opt-1.3b": _HUB.format("facebook/opt-1.3b"),
}
PRESET_NAMES = tuple(PRESETS)
# transformers' default for tie_word_embeddings where a config.json leaves it out (each family's config class)
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "gpt2", "opt"}
_ALIASES = {"hidden_size": ("hidden_size", "n_embd", "d_model"), "num_hidden_layers": ("num_hidden_layers", "n_layer"),
            "num_attention_heads": ("num_attention_heads", "n_head"), "vocab_size": ("vocab_size",)}


def load_config(model, argument: str = "model") -> dict:
    """The config of ``model`` as a plain dict (what its config.json holds), without importing transformers.

    ``model``: a preset name (``PRESET_NAMES``), a dict, a ``transformers.PretrainedConfig``, a path to a
    ``config.json`` or to a folder holding one, or a hub id such as ``"Qwen/Qwen2.5-0.5B"`` (read from the
    hub only when online; offline the error says to pass a local config.json).
    Example: ``load_config("qwen2.5-0.5b")["hidden_size"] -> 896``.
    """
    if isinstance(model, dict):
        config = dict(model)
    elif hasattr(model, "to_dict") and hasattr(model, "model_type"):  # a transformers PretrainedConfig
        config = model.to_dict()
        config.setdefault("model_type", model.model_type)
    elif isinstance(model, (str, os.PathLike)):
        config = _read(str(model), argument)
    else:
        raise TypeError(f"{argument} must be a preset name, a dict, a path to a config.json or a transformers "
                        f"config, got {type(model).__name__}")
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:  # e.g. Gemma 3 4B
        config = dict(config["text_config"])
        config["model_type"] = config.get("model_type") or "gemma3_text"
    if not isinstance(config.get("model_type"), str):
        raise ValueError(f"{argument} has no 'model_type' (a config.json of a Hugging Face model has one)")
    return config


def _read(name: str, argument: str) -> dict:
    if name.lower() in PRESETS:
        return dict(PRESETS[name.lower()])
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{argument} {name!r} is not a readable config.json: {error}") from None
    if name.endswith(".json") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"{argument} {name!r}: no such config.json or model folder")
    if "/" not in name:
        raise ValueError(f"{argument} {name!r} is not a preset ({', '.join(PRESET_NAMES)}), a config.json, "
                         f"a model folder or a hub id (owner/name)")
    return _from_hub(name, argument)


def _from_hub(name: str, argument: str) -> dict:
    """config.json of hub repository ``name``: from the local cache, else downloaded if the hub answers in 3 s."""
    import socket

    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(name, "config.json", local_files_only=True)).read_text())
    except Exception:  # not in the cache
        pass
    try:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as error:
        raise ValueError(f"{argument} {name!r} looks like a hub id, but the Hugging Face hub cannot be reached "
                         f"({error}); offline, pass a local config.json or model folder") from None
    try:
        return json.loads(Path(hf_hub_download(name, "config.json")).read_text())
    except Exception as error:  # unknown repository, gated model, network: all end the same way
        raise ValueError(f"{argument} {name!r}: could not read its config.json from the Hugging Face hub "
                         f"({type(error).__name__}); download config.json and pass its path") from None


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model that counts and estimates need, read from its config.

    h hidden, i MLP width (of one expert for MoE), L layers, H query heads, KV key/value heads,
    head_dim, V vocabulary; experts E and top_k (0 for dense models); positions: rows of a learned
    position table (GPT-2, OPT), 0 for rotary models.
    Example: ``model_shape("qwen3-8b").head_dim -> 128`` (not 4096 / 32 = 128 by chance: set in config.json).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    experts: int = 0
    top_k: int = 0
    positions: int = 0
    config: tuple = ()  # the config's items, for what a family reads beyond these numbers

    def get(self, key: str, default=None):
        return dict(self.config).get(key, default)


def _positive(config: dict, keys: tuple[str, ...], argument: str, default=None) -> int:
    value = next((config[k] for k in keys if config.get(k) is not None), default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argument}.{keys[0]} must be a positive int, got {value!r} "
                         f"(model_type {config.get('model_type')!r})")
    return value


def model_shape(model, argument: str = "model") -> ModelShape:
    """The ``ModelShape`` of anything ``load_config`` reads; raises ValueError naming a missing or bad number."""
    config = load_config(model, argument)
    kind = config["model_type"]
    h, layers, heads, vocab = (_positive(config, _ALIASES[k], argument) for k in
                               ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"))
    width_keys = {"gpt2": ("n_inner",), "opt": ("ffn_dim",), "qwen3_moe": ("moe_intermediate_size",)}
    intermediate = _positive(config, width_keys.get(kind, ("intermediate_size",)), argument,
                             default=4 * h if kind == "gpt2" else None)
    kv = _positive(config, ("num_key_value_heads",), argument, default=heads)
    head_dim = _positive(config, ("head_dim",), argument, default=h // heads)
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    top_k = config.get("num_experts_per_tok") or 0 if experts else 0
    positions = {"gpt2": config.get("n_positions", 1024), "opt": config.get("max_position_embeddings", 2048) + 2}
    tied = config.get("tie_word_embeddings", kind in _TIED_BY_DEFAULT)
    items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()
                  if isinstance(v, (int, float, str, bool, type(None))) or (isinstance(v, list) and len(v) < 1000))
    return ModelShape(kind, vocab, h, intermediate, layers, heads, kv, head_dim, bool(tied), int(experts), int(top_k),
                      int(positions.get(kind, 0)), items)
