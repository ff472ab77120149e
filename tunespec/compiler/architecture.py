"""The architecture model: a decoder-only model's layers and shapes, read from its transformers config.

``architecture_of(config)`` needs no weights. The memory estimate, the compute estimate and the
trainable-parameter counts all read the model through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Linear:
    """A linear layer of one decoder layer, named relative to the layer (e.g. ``self_attn.q_proj``)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Architecture:
    """What the estimates need to know about a decoder-only model, read from its config."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    gated_mlp: bool
    linears: tuple[Linear, ...]  # in one decoder layer
    layer_other_params: int  # norms (and other small parameters) of one decoder layer
    final_norm_params: int
    lm_head_bias: bool = False
    layer_prefix: str = "model.layers"  # module path of the decoder layers
    embedding_name: str = "model.embed_tokens"
    norm: str = "rms"  # "rms" (RMSNorm, computed in fp32) or "layer" (LayerNorm)
    norms_per_layer: int = 2
    norm_inputs_shared: bool = False  # the norms read the same tensor (parallel attention and MLP)
    fused_qkv: bool = False
    hidden_act: str = "silu"
    known_layout: bool = True  # False: an unknown model type, read as Llama-like

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of the LM head that are not shared with the embeddings."""
        weight = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return weight + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def layer_params(self) -> int:
        return sum(lin.params for lin in self.linears) + self.layer_other_params

    @property
    def layer_linear_weights(self) -> int:
        """Weight-matrix parameters of one decoder layer's linears (what quantization packs)."""
        return sum(lin.in_features * lin.out_features for lin in self.linears)

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm, LM head."""
        return self.embedding_params + self.final_norm_params + self.lm_head_params

    @property
    def total_params(self) -> int:
        return (
            self.embedding_params
            + self.num_layers * self.layer_params
            + self.final_norm_params
            + self.lm_head_params
        )

    def module_names(self) -> list[tuple[str, Linear]]:
        """Every decoder-layer linear with its full module name (``model.layers.3.self_attn.q_proj``)."""
        return [
            (f"{self.layer_prefix}.{i}.{lin.name}", lin) for i in range(self.num_layers) for lin in self.linears
        ]


def _get(config: Any, data: dict, *names: str) -> Any:
    """The first of ``names`` the config sets (attribute or ``to_dict()`` key), else None."""
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if value is None:
            value = data.get(name)
        if value is not None:
            return value
    return None


def architecture_of(config: Any) -> Architecture:
    """Read a transformers ``PretrainedConfig`` (or a plain dict) into an ``Architecture``.

    Llama-like models (llama, mistral, qwen2/3, gemma, granite, smollm3) are the default layout;
    GPT-NeoX and Phi have their own. Other model types are read as Llama-like (``known_layout``
    is then False).
    """
    if isinstance(config, dict):
        data, config = dict(config), None
    else:
        data = config.to_dict()
    model_type = str(_get(config, data, "model_type") or "")
    h = _get(config, data, "hidden_size", "n_embd", "d_model")
    layers = _get(config, data, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(config, data, "num_attention_heads", "n_head")
    vocab = _get(config, data, "vocab_size")
    if None in (h, layers, heads, vocab):
        raise ValueError(
            f"the model config ({model_type or 'unknown type'}) lacks hidden size, layers, heads or vocab size"
        )
    inter = _get(config, data, "intermediate_size", "n_inner", "ffn_dim") or 4 * h
    kv_heads = _get(config, data, "num_key_value_heads", "num_kv_heads")
    if kv_heads is None or model_type == "gpt_neox":  # GPT-NeoX has no grouped-query attention
        kv_heads = 1 if data.get("multi_query") else heads
    head_dim = _get(config, data, "head_dim") or h // heads
    tied = bool(_get(config, data, "tie_word_embeddings") or False)
    act = str(_get(config, data, "hidden_act", "hidden_activation", "activation_function") or "silu")
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    shape = dict(
        model_type=model_type,
        hidden_size=h,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        hidden_act=act,
    )
    if model_type == "gpt_neox":
        bias = data.get("attention_bias")
        bias = True if bias is None else bool(bias)  # GPT-NeoX's attention has biases unless told otherwise
        linears = (
            Linear("attention.query_key_value", h, q_out + 2 * kv_out, bias),
            Linear("attention.dense", q_out, h, bias),
            Linear("mlp.dense_h_to_4h", h, inter, True),
            Linear("mlp.dense_4h_to_h", inter, h, True),
        )
        return Architecture(
            **shape,
            gated_mlp=False,
            linears=linears,
            layer_other_params=2 * 2 * h,  # two LayerNorms, weight and bias
            final_norm_params=2 * h,
            layer_prefix="gpt_neox.layers",
            embedding_name="gpt_neox.embed_in",
            norm="layer",
            norm_inputs_shared=bool(data.get("use_parallel_residual", True)),
            fused_qkv=True,
        )
    if model_type == "phi":
        qk_norm = 2 * 2 * head_dim if data.get("qk_layernorm") else 0
        linears = (
            Linear("self_attn.q_proj", h, q_out, True),
            Linear("self_attn.k_proj", h, kv_out, True),
            Linear("self_attn.v_proj", h, kv_out, True),
            Linear("self_attn.dense", q_out, h, True),
            Linear("mlp.fc1", h, inter, True),
            Linear("mlp.fc2", inter, h, True),
        )
        return Architecture(
            **shape,
            gated_mlp=False,
            linears=linears,
            layer_other_params=2 * h + qk_norm,  # one LayerNorm (parallel attention and MLP)
            final_norm_params=2 * h,
            lm_head_bias=True,
            norm="layer",
            norms_per_layer=1,
        )
    attn_bias = bool(data.get("attention_bias") or False)
    qkv_bias = attn_bias or model_type == "qwen2"
    mlp_bias = bool(data.get("mlp_bias") or False)
    linears = (
        Linear("self_attn.q_proj", h, q_out, qkv_bias),
        Linear("self_attn.k_proj", h, kv_out, qkv_bias),
        Linear("self_attn.v_proj", h, kv_out, qkv_bias),
        Linear("self_attn.o_proj", q_out, h, attn_bias),
        Linear("mlp.gate_proj", h, inter, mlp_bias),
        Linear("mlp.up_proj", h, inter, mlp_bias),
        Linear("mlp.down_proj", inter, h, mlp_bias),
    )
    qk_norm = 2 * head_dim if model_type == "qwen3" else 0
    known = model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma", "granite", "smollm3"}
    return Architecture(
        **shape,
        gated_mlp=True,
        linears=linears,
        layer_other_params=2 * h + qk_norm,  # two RMSNorms (weight only)
        final_norm_params=h,
        known_layout=known,
    )


def count_parameters(config: Any) -> int:
    """The model's parameter count, from its config (shared embedding/LM-head weights count once)."""
    return architecture_of(config).total_params

