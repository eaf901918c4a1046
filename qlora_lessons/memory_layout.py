"""Memory of fine-tuning, part 1b: the layout of a decoder layer in every family, and exact parameter counts.

``layer_linears`` lists the linear maps of one decoder layer as the transformers model names them
(Llama's q/k/v/o and gate/up/down, Phi-3's fused qkv_proj and gate_up_proj, GPT-2's Conv1D c_attn,
OPT's out_proj and fc1/fc2, an MoE router), ``count_parameters`` adds up every parameter by kind
(matching ``AutoModelForCausalLM.from_config`` exactly, as the tests check for each family) and
``count_lora_parameters`` the adapters on the layers that LoRA targets. From the config alone, without
building the model, so that the command line needs no transformers.

Left out: families not listed in ``FAMILIES`` (count them by building the model on the meta device); LoRA
on MoE routers and experts: "all-linear" means the attention's linear layers of an MoE model here, while
peft >= 0.21's "all-linear" also wraps the router and the 3-D expert tensors (``ParamWrapper``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_lessons.memory_models import ModelShape, model_shape
from qlora_lessons.renamed_arguments import renamed_arguments

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama's, in order
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt", "gpt2", "mixtral",
            "qwen3_moe")


def shape_of(config, argument: str = "config") -> ModelShape:
    """The ``ModelShape`` of ``config`` (a ModelShape is returned as it is); raises for a family not in FAMILIES."""
    shape = config if isinstance(config, ModelShape) else model_shape(config, argument)
    if shape.model_type not in FAMILIES:
        raise ValueError(f"{argument} has model_type {shape.model_type!r}; the layouts known here are "
                         f"{', '.join(FAMILIES)}")
    return shape


def check_config(config, argument: str = "model") -> ModelShape:
    """Raise unless ``config`` describes a supported decoder-only model with positive sizes; returns its shape."""
    return shape_of(config, argument)


@dataclass(frozen=True)
class LayerLinear:
    """One linear map of a decoder layer: its module name, weight (out, in), bias, and role in the layer.

    role: "qkv" (reads the attention input), "o" (reads the attention output), "up" (reads the MLP
    input), "down" (reads the MLP's inner activation), "router" (an MoE gate, reads the MLP input; in
    transformers 5 a plain weight, not an nn.Linear, so neither LoRA nor 4-bit quantization touches it).
    """

    name: str
    out: int
    inp: int
    bias: bool
    role: str


def is_sparse(shape: ModelShape) -> bool:
    """Whether the decoder layers hold experts (Mixtral: all; Qwen3-MoE: all but ``mlp_only_layers``, taken empty)."""
    return bool(shape.experts) and not shape.get("mlp_only_layers")


def layer_linears(config, argument: str = "config") -> list[LayerLinear]:
    """The linear maps of one decoder layer, named as in the transformers model, for every family in FAMILIES.

    Equations: q = H head_dim, kv = KV head_dim wide; gated MLPs (Llama and kin) gate/up (i, h), down (h, i);
    Phi-3 fuses them (qkv_proj (q + 2 kv, h), gate_up_proj (2 i, h)); GPT-2 uses Conv1D (c_attn (3h, h));
    OPT has biases everywhere. MoE layers have a router (E, h) here and their experts in ``count_parameters``.
    Example: ``(x.name, x.out, x.inp) for the first of llama-7b -> ("q_proj", 4096, 4096)``.
    """
    s = shape_of(config, argument)
    h, i = s.hidden_size, s.intermediate_size
    q, kv = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    kind = s.model_type
    if kind == "gpt2":
        return [LayerLinear("c_attn", 3 * h, h, True, "qkv"), LayerLinear("attn.c_proj", h, h, True, "o"),
                LayerLinear("c_fc", i, h, True, "up"), LayerLinear("mlp.c_proj", h, i, True, "down")]
    if kind == "opt":
        bias = bool(s.get("enable_bias", True))
        return [LayerLinear(n, h, h, bias, "qkv") for n in ("k_proj", "v_proj", "q_proj")] + [
            LayerLinear("out_proj", h, h, bias, "o"), LayerLinear("fc1", i, h, bias, "up"),
            LayerLinear("fc2", h, i, bias, "down")]
    qkv_bias = kind == "qwen2" or bool(s.get("attention_bias", False))
    o_bias, mlp_bias = bool(s.get("attention_bias", False)), bool(s.get("mlp_bias", False))
    if kind == "phi3":
        return [LayerLinear("o_proj", h, q, o_bias, "o"), LayerLinear("qkv_proj", q + 2 * kv, h, qkv_bias, "qkv"),
                LayerLinear("gate_up_proj", 2 * i, h, mlp_bias, "up"), LayerLinear("down_proj", h, i, mlp_bias, "down")]
    layer = [LayerLinear("q_proj", q, h, qkv_bias, "qkv"), LayerLinear("k_proj", kv, h, qkv_bias, "qkv"),
             LayerLinear("v_proj", kv, h, qkv_bias, "qkv"), LayerLinear("o_proj", h, q, o_bias, "o")]
    if is_sparse(s):
        return layer + [LayerLinear("gate", s.experts, h, False, "router")]
    return layer + [LayerLinear("gate_proj", i, h, mlp_bias, "up"), LayerLinear("up_proj", i, h, mlp_bias, "up"),
                    LayerLinear("down_proj", h, i, mlp_bias, "down")]


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """The (out, in) shape of each linear layer in one decoder layer, by name.

    Example: llama-7b -> {"q_proj": (4096, 4096), ..., "k_proj": (4096, 4096), "down_proj": (4096, 11008)}.
    """
    return {x.name: (x.out, x.inp) for x in layer_linears(config)}


def norms_per_layer(shape: ModelShape) -> tuple[int, int]:
    """(norms of width h, norms of width head_dim) in one decoder layer: 2 around attention and MLP (Gemma 2
    and 3: 4, before and after each); Qwen3 and Gemma 3 also normalise q and k per head (q_norm, k_norm)."""
    wide = 4 if shape.model_type in ("gemma2", "gemma3_text") else 2
    per_head = 2 if shape.model_type in ("qwen3", "qwen3_moe", "gemma3_text") else 0
    return wide, per_head


def count_parameters(config) -> dict[str, int]:
    """Parameters by kind: ``linear`` (decoder-layer weights), ``embeddings`` (token and position tables, lm_head),
    ``norms`` (their weights and biases), and where a model has them ``biases``, ``experts``, ``router``.

    ``config``: anything ``memory_models.load_config`` reads (a transformers config of any family in
    FAMILIES, a dict, a config.json path, a preset name). The parts sum to the parameters of the model that
    ``AutoModelForCausalLM.from_config`` builds (the tests check every family).
    Equation (Llama): linear = L * sum(out * in over the 7 matrices); embeddings = 2 * V * h (untied);
    norms = (2 L + 1) * h. MoE: experts = L * E * 3 * h * i (gate, up, down of every expert).
    Example: ``sum(count_parameters(model_config("llama-7b")).values()) -> 6738415616``.
    """
    s = shape_of(config, "config")
    h, L, V = s.hidden_size, s.num_hidden_layers, s.vocab_size
    linears = layer_linears(s)
    embed_width = (s.get("word_embed_proj_dim") or h) if s.model_type == "opt" else h
    embeddings = V * embed_width * (1 if s.tie_word_embeddings else 2) + s.positions * h
    embeddings += 2 * h * embed_width if embed_width != h else 0  # OPT-350m: project_in and project_out
    wide, per_head = norms_per_layer(s)
    final_norm = not (s.model_type == "opt" and (not s.get("do_layer_norm_before", True)
                                                 or s.get("_remove_final_layer_norm", False)))
    layernorm = 2 if s.model_type in ("gpt2", "opt") else 1  # LayerNorm: a weight and a bias; RMSNorm: a weight
    norms = (L * wide + final_norm) * h * layernorm + L * per_head * s.head_dim
    parts = {"linear": L * sum(x.out * x.inp for x in linears if x.role != "router"), "embeddings": embeddings,
             "norms": norms}
    biases = L * sum(x.out for x in linears if x.bias)
    experts = L * s.experts * 3 * h * s.intermediate_size if is_sparse(s) else 0
    router = L * sum(x.out * x.inp for x in linears if x.role == "router")
    parts.update({k: v for k, v in (("biases", biases), ("experts", experts), ("router", router)) if v})
    return parts


def check_targets(targets: tuple[str, ...] | list[str] | str, names: tuple[str, ...] = LINEAR_NAMES) -> tuple[str, ...]:
    """The target names as a tuple: ``"all-linear"`` means every linear map of a decoder layer (``names``)."""
    if targets == "all-linear":
        return names
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets:
        raise ValueError(f"target_modules must be 'all-linear' or a non-empty tuple of names from {names}, "
                         f"got {targets!r}")
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ValueError(f"target_modules has unknown names {unknown}; choose from {names}")
    return tuple(dict.fromkeys(targets))


def targeted(config, targets) -> list[LayerLinear]:
    """The linear maps of one layer that LoRA ``targets`` match, as peft matches them (the name or a suffix)."""
    linears = [x for x in layer_linears(config) if x.role != "router"]  # an MoE router is not an nn.Linear
    names = check_targets(targets, tuple(x.name for x in linears))
    return [x for x in linears if any(x.name == t or x.name.endswith("." + t) for t in names)]


@renamed_arguments(targets="target_modules")
def count_lora_parameters(config, r: int, target_modules: tuple[str, ...] | list[str] | str) -> int:
    """Trainable parameters of LoRA adapters of rank ``r`` on ``target_modules`` in every decoder layer.

    Equation: L * sum over targeted W (out, in) of r * (in + out)  (A is (r, in), B is (out, r)).
    Example: ``count_lora_parameters(model_config("llama-7b"), 8, ("q_proj", "v_proj")) -> 4194304``.
    """
    shape = shape_of(config, "config")
    chosen = targeted(shape, target_modules)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    for x in chosen:
        if r > min(x.out, x.inp):
            raise ValueError(f"r={r} is larger than the {x.name} matrix {(x.out, x.inp)} allows "
                             f"(a rank is at most min(out, in) = {min(x.out, x.inp)})")
    return shape.num_hidden_layers * sum(r * (x.out + x.inp) for x in chosen)
