"""Flax linen BERT-family encoders: BERT / MiniLM (`BertModel`) and RoBERTa (`RobertaModel`), no pooler.

Module names follow Hugging Face, with list items written `layer_3`, so that Flax paths read like the
PyTorch names: `encoder.layer.3.attention.self.query` is `encoder/layer_3/attention/self/query`.

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    encoder/layer_{i}/attention/self/{query, key, value}       nn.Dense  H -> H
    encoder/layer_{i}/attention/output/{dense, LayerNorm}      nn.Dense  H -> H, then LN(x + residual)
    encoder/layer_{i}/intermediate/dense                       nn.Dense  H -> I, then the activation
    encoder/layer_{i}/output/{dense, LayerNorm}                nn.Dense  I -> H, then LN(x + residual)

Linear layers are plain `nn.Dense` and norms plain `nn.LayerNorm`, so delta modules find them as
positions by type. RoBERTa differs only in its position ids: padding_idx + 1 + the running count of
non-pad tokens, and padding_idx itself at pad tokens (Hugging Face `create_position_ids_from_input_ids`).
Every parameter carries t5x logical axis names. Dropout sits where Hugging Face puts it: after the
embedding LayerNorm, on the attention probabilities, and on both dense outputs before the residual add
(hashed masks, models/dropout.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from s3delta_jax.errors import UserError
from s3delta_jax.models.dropout import Dropout

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}
MODEL_TYPES = ("bert", "roberta")


class BertConfigError(UserError, ValueError):
    """A BERT / RoBERTa configuration or a preset name is invalid."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT-family encoder (hashable, so it can be a static jit argument).

    Field names and defaults are those of Hugging Face `BertConfig` (bert-base-uncased);
    `pad_token_id` sets RoBERTa's position ids, `dtype` is the compute dtype.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    model_type: str = "bert"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise BertConfigError(
                f"model_type={self.model_type!r} is not supported: use one of {', '.join(MODEL_TYPES)}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise BertConfigError(
                f"hidden_act={self.hidden_act!r} is not supported: use one of {', '.join(ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise BertConfigError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}: "
                "pick a head count that divides it"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """Builds a config from a Hugging Face `config.json` dict; `overrides` replace fields.

        Missing keys take Hugging Face's defaults (RoBERTa's pad_token_id defaults to 1).
        """
        position_embedding_type = hf.get("position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise BertConfigError(
                f"position_embedding_type={position_embedding_type!r} is not supported: "
                "only 'absolute' position embeddings are implemented"
            )
        model_type = hf.get("model_type", "bert")
        names = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype"}
        fields = {name: hf[name] for name in names if hf.get(name) is not None}
        fields.setdefault("pad_token_id", 1 if model_type == "roberta" else 0)
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dict of this architecture (dtypes excluded)."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("dtype", "param_dtype")]
        hf = {name: getattr(self, name) for name in names}
        architecture = "RobertaModel" if self.model_type == "roberta" else "BertModel"
        hf.update(position_embedding_type="absolute", architectures=[architecture])
        return hf


_ROBERTA = dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                pad_token_id=1, layer_norm_eps=1e-5)
# The shapes of the Hugging Face hub checkpoints (weights are random: load those with convert.load_checkpoint).
PRESETS: dict[str, BertConfig] = {
    "minilm-l6": BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536),
    "bert-base-uncased": BertConfig(),
    "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096),
    "roberta-base": BertConfig(**_ROBERTA),
    "roberta-large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096, **_ROBERTA),
}


def get_config(name: str, **overrides: Any) -> BertConfig:
    """The preset config `name` ("minilm-l6", "bert-base-uncased", "roberta-large", ...) with `overrides`."""
    if name not in PRESETS:
        raise BertConfigError(f"unknown BERT preset {name!r}: use one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# Layers


def _dense(features: int, axes: tuple[str, str], config: BertConfig, name: str) -> nn.Dense:
    """A linear layer (kernel [in, out], bias [out]) with logical axis names and HF's init."""
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


def _embed(num_embeddings: int, axes: tuple[str | None, str], config: BertConfig, name: str) -> nn.Embed:
    return nn.Embed(
        num_embeddings,
        config.hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes),
        name=name,
    )


def _layer_norm(config: BertConfig) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the one-pass form loses digits at eps 1e-12).
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name="LayerNorm",
    )


def position_ids(input_ids: Array, config: BertConfig) -> Array:
    """int[B, L] -> int[B, L]: 0..L-1 for BERT; for RoBERTa pad + 1 + running count of non-pad tokens, pad at pads."""
    if config.model_type == "bert":
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    is_token = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=1) * is_token + config.pad_token_id


class BertEmbeddings(nn.Module):
    """dropout(LayerNorm(word + position + token-type embeddings))."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool = True) -> Array:
        """input_ids, token_type_ids int[B, L] -> [B, L, H]."""
        c = self.config
        words = _embed(c.vocab_size, ("vocab", "embed"), c, "word_embeddings")
        positions = _embed(c.max_position_embeddings, (None, "embed"), c, "position_embeddings")
        token_types = _embed(c.type_vocab_size, (None, "embed"), c, "token_type_embeddings")
        hidden = words(input_ids) + positions(position_ids(input_ids, c)) + token_types(token_type_ids)
        hidden = Dropout(c.hidden_dropout_prob)(_layer_norm(c)(hidden), deterministic=deterministic)
        return nn.with_logical_constraint(hidden, ("batch", "length", "embed"))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the sequence, without the output projection."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        """hidden [B, L, H], mask bool[B, 1, 1, L] (True = attend) -> context [B, L, H]."""
        c = self.config

        def heads(name: str) -> Array:
            x = _dense(c.hidden_size, ("embed", "joined_kv"), c, name)(hidden)
            x = x.reshape(*hidden.shape[:2], c.num_attention_heads, c.head_dim)
            return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))

        query, key, value = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) / math.sqrt(c.head_dim)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(c.dtype)
        probs = Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, value)
        return context.reshape(*hidden.shape[:2], c.hidden_size)


class BertResidualOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual): Hugging Face's BertSelfOutput and BertOutput."""

    config: BertConfig
    in_axis: str  # logical axis of x: 'joined_kv' after attention, 'mlp' after the intermediate layer

    @nn.compact
    def __call__(self, hidden: Array, residual: Array, deterministic: bool = True) -> Array:
        """hidden [B, L, H or I], residual [B, L, H] -> [B, L, H]."""
        c = self.config
        h = _dense(c.hidden_size, (self.in_axis, "embed"), c, "dense")(hidden)
        h = Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        return _layer_norm(c)(h + residual)


class BertAttention(nn.Module):
    """Self-attention, then its output projection with the residual LayerNorm. [B, L, H] -> [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        context = BertSelfAttention(self.config, name="self")(hidden, mask, deterministic)
        return BertResidualOutput(self.config, "joined_kv", name="output")(context, hidden, deterministic)


class BertIntermediate(nn.Module):
    """act(dense(x)): [B, L, H] -> [B, L, I]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        c = self.config
        h = ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, ("embed", "mlp"), c, "dense")(hidden))
        return nn.with_logical_constraint(h, ("batch", "length", "mlp"))


class BertLayer(nn.Module):
    """One transformer layer (post-LN): attention, then the feed-forward. [B, L, H] -> [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        attended = BertAttention(self.config, name="attention")(hidden, mask, deterministic)
        expanded = BertIntermediate(self.config, name="intermediate")(attended)
        out = BertResidualOutput(self.config, "mlp", name="output")(expanded, attended, deterministic)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class BertEncoder(nn.Module):
    """The stack of `num_hidden_layers` BertLayers. [B, L, H] -> [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        for i in range(self.config.num_hidden_layers):
            hidden = BertLayer(self.config, name=f"layer_{i}")(hidden, mask, deterministic)
        return hidden


class BertModel(nn.Module):
    """The BERT / RoBERTa encoder without pooler. Dropout needs rngs={"dropout": key}.

    `hidden_states` returns every layer's output (Hugging Face's `output_hidden_states`).
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, token_type_ids: Array | None = None,
                 deterministic: bool = True) -> Array:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids (None: zeros) int[B, L]
        -> last hidden state [B, L, H] in `config.dtype`."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids, deterministic)
        mask = attention_mask.astype(bool)[:, None, None, :]
        return BertEncoder(self.config, name="encoder")(hidden, mask, deterministic)


def _is_hidden_state(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and isinstance(module, (BertEmbeddings, BertLayer))


def hidden_states(model: BertModel, params: Mapping[str, Any], input_ids: Array, attention_mask: Array,
                  token_type_ids: Array | None = None) -> list[Array]:
    """The embeddings output and each layer's output: num_hidden_layers + 1 arrays [B, L, H], as
    Hugging Face's `output_hidden_states=True`. Jit it with `jax.jit(hidden_states, static_argnums=0)`."""
    _, state = model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                           capture_intermediates=_is_hidden_state, mutable=["intermediates"])
    captured = state["intermediates"]
    layers = captured["encoder"]
    return [captured["embeddings"]["__call__"][0],
            *(layers[f"layer_{i}"]["__call__"][0] for i in range(model.config.num_hidden_layers))]


# --------------------------------------------------------------------------------------------
# Shapes, counts, logical axes, initialisation


@functools.lru_cache(maxsize=32)
def _boxed_param_shapes(config: BertConfig) -> Any:
    ids = jnp.ones((1, 1), jnp.int32)
    return jax.eval_shape(lambda: BertModel(config).init(jax.random.key(0), ids, ids)["params"])


def param_shapes(config: BertConfig) -> Any:
    """The params pytree as `jax.ShapeDtypeStruct`s, traced with `jax.eval_shape` (no weights)."""
    return nn.unbox(_boxed_param_shapes(config))


def logical_axes(config: BertConfig) -> Any:
    """The params pytree of `PartitionSpec`s of logical axis names (e.g. ('embed', 'joined_kv'))."""
    return nn.get_partition_spec(_boxed_param_shapes(config))


def count_params(config: BertConfig) -> int:
    """Number of encoder parameters (no pooler)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(param_shapes(config)))


def init_params(config: BertConfig, rng: Array) -> dict[str, Any]:
    """Random params (Hugging Face init: normal(initializer_range), zero biases) as a plain nested dict."""
    ids = jnp.ones((1, 1), jnp.int32)
    return nn.unbox(jax.jit(BertModel(config).init)(rng, ids, ids)["params"])


__all__ = [
    "ACTIVATIONS",
    "MODEL_TYPES",
    "PRESETS",
    "BertConfig",
    "BertConfigError",
    "BertEmbeddings",
    "BertLayer",
    "BertModel",
    "count_params",
    "get_config",
    "hidden_states",
    "init_params",
    "logical_axes",
    "param_shapes",
    "position_ids",
]
