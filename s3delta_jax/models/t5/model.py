"""Flax linen T5 encoder-decoder: original T5 (t5-small ... t5-11b) and T5 v1.1 / FLAN-T5.

The module tree mirrors Hugging Face names (`block.3` <-> `block_3`, `layer.1` <-> `layer_1`):

    shared                                   nn.Embed [vocab, d_model]
    encoder/block_{i}/layer_0/{layer_norm, SelfAttention/{q,k,v,o[,relative_attention_bias]}}
    encoder/block_{i}/layer_1/{layer_norm, DenseReluDense/{wi | wi_0,wi_1 ; wo}}
    encoder/final_layer_norm
    decoder/block_{i}/layer_0/{layer_norm, SelfAttention/...}
    decoder/block_{i}/layer_1/{layer_norm, EncDecAttention/{q,k,v,o}}
    decoder/block_{i}/layer_2/{layer_norm, DenseReluDense/...}
    decoder/final_layer_norm
    lm_head                                  nn.Dense, only when embeddings are untied (v1.1 / FLAN)

The relative-position table lives in block_0's SelfAttention and is shared by the later blocks.
With `scan_layers`, all blocks of each stack are one nn.scan module `block_scan` with stacked params
(`scanned_layers` describes the layout for `deltas.scan.stack_layers`), and block_0 keeps only the
table, whose bias the stack computes before the scan; `remat` recomputes each block in the backward
pass.
`SelfAttention`/`EncDecAttention` (T5Attention) and `DenseReluDense` return one array
[batch, length, d_model], so delta modules can intercept them with `nn.intercept_methods`.
Every parameter carries t5x logical axis names; key activations get logical constraints.

Dropout sits exactly where Hugging Face puts it: on the embeddings, on the attention weights,
on every sublayer output before the residual add, on the FFN hidden layer, and after the final
layer norm of each stack; its masks are hashed (models/dropout.py), not drawn with jax.random.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from s3delta_jax.deltas.positions import register_norm
from s3delta_jax.deltas.scan import ScannedLayers
from s3delta_jax.errors import UserError
from s3delta_jax.models.dropout import Dropout
from s3delta_jax.models.remat import REMAT_POLICIES

Array = jax.Array
Dtype = Any
Params = Mapping[str, Any]
ApplyFn = Callable[..., Any]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "silu": nn.silu,
}


class T5ConfigError(UserError, ValueError):
    """A T5 configuration or a preset name is invalid."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 model (hashable, so it can be a static jit argument).

    `tie_word_embeddings=True` is the original T5 head: logits = (h * d_model**-0.5) @ shared.T.
    `False` is the v1.1 / FLAN-T5 head: a separate `lm_head`, no scaling.
    `feed_forward_proj` is "relu" (original) or "gated-gelu" (v1.1, tanh-approximated GELU);
    "gelu", "silu" and their "gated-" forms follow the Hugging Face meaning too.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: same as num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = False  # the blocks of each stack under nn.scan (params stacked, see scanned_layers)
    remat: str = "none"  # what each block's backward recomputes instead of storing: "none", "full", "dots"

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        gated, _, act = self.feed_forward_proj.rpartition("-")
        if gated not in ("", "gated") or act not in _ACTIVATIONS:
            raise T5ConfigError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported: use 'relu', "
                f"'gated-gelu' or '[gated-]{{{','.join(_ACTIVATIONS)}}}'"
            )
        if self.remat not in REMAT_POLICIES:
            raise T5ConfigError(f"remat={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> Callable[[Array], Array]:
        """The FFN activation; "gated-gelu" means the tanh approximation (HF `gelu_new`)."""
        if self.feed_forward_proj == "gated-gelu":
            return _ACTIVATIONS["gelu_new"]
        return _ACTIVATIONS[self.feed_forward_proj.rpartition("-")[2]]

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], **overrides: Any) -> T5Config:
        """Builds a config from a Hugging Face `config.json` dict; `overrides` replace fields.

        Transformers >= 5 writes `tie_word_embeddings: true` for every T5 and records the head
        kind in `scale_decoder_outputs`; older files (and the hub) use `tie_word_embeddings`.
        """
        if hf.get("model_type", "t5") not in ("t5", "mt5"):
            raise T5ConfigError(
                f"model_type={hf['model_type']!r} is not a T5 checkpoint: pass a T5, T5 v1.1, "
                "FLAN-T5 or mT5 model"
            )
        tied = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
        eos = hf.get("eos_token_id", 1)
        fields = dict(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            d_kv=hf["d_kv"],
            d_ff=hf["d_ff"],
            num_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers"),
            num_heads=hf["num_heads"],
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout_rate=hf.get("dropout_rate", 0.1),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=hf.get("feed_forward_proj", "relu"),
            tie_word_embeddings=bool(tied),
            pad_token_id=hf.get("pad_token_id", 0),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dict of this architecture (dtypes excluded)."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("dtype", "param_dtype")]
        hf = {name: getattr(self, name) for name in names}
        hf.update(model_type="t5", is_encoder_decoder=True, architectures=["T5ForConditionalGeneration"])
        return hf


def _t5(d_model: int, d_kv: int, d_ff: int, layers: int, heads: int) -> T5Config:
    return T5Config(d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads)


def _v1_1(d_model: int, d_ff: int, layers: int, heads: int) -> T5Config:
    return T5Config(
        d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers, num_heads=heads,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )


_V1_1_SIZES = {
    "small": _v1_1(512, 1024, 8, 6),
    "base": _v1_1(768, 2048, 12, 12),
    "large": _v1_1(1024, 2816, 24, 16),
    "xl": _v1_1(2048, 5120, 24, 32),
    "xxl": _v1_1(4096, 10240, 24, 64),
}
# Exact Hugging Face hub configs (vocab 32128, dropout 0.1, eps 1e-6, 32 buckets, distance 128).
PRESETS: dict[str, T5Config] = {
    "t5-small": _t5(512, 64, 2048, 6, 8),
    "t5-base": _t5(768, 64, 3072, 12, 12),
    "t5-large": _t5(1024, 64, 4096, 24, 16),
    "t5-3b": _t5(1024, 128, 16384, 24, 32),
    "t5-11b": _t5(1024, 128, 65536, 24, 128),
    **{f"google/t5-v1_1-{size}": config for size, config in _V1_1_SIZES.items()},
    **{f"google/flan-t5-{size}": config for size, config in _V1_1_SIZES.items()},
}


def get_config(name: str, **overrides: Any) -> T5Config:
    """The preset config of a known checkpoint ("t5-large", "google-t5/t5-large", "google/flan-t5-xl")."""
    key = name.removeprefix("google-t5/")
    if key not in PRESETS:
        raise T5ConfigError(f"unknown T5 preset {name!r}: use one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[key], **overrides)


# --------------------------------------------------------------------------------------------
# Layers


def _dense(features: int, axes: tuple[str, str], stddev: float, config: T5Config) -> nn.Dense:
    """A bias-free linear layer (kernel [in, out]) with logical axis names and HF's init scale."""
    return nn.Dense(
        features,
        use_bias=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
    )


def _layer_norm(config: T5Config) -> T5LayerNorm:
    return T5LayerNorm(config.layer_norm_epsilon, config.dtype, config.param_dtype)


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucket of `memory_position - query_position` (any int shape -> same shape, int32).

    Half of the buckets are exact small distances, the rest grow logarithmically up to
    `max_distance`; bidirectional (encoder) splits them by sign, causal (decoder) keeps the past.
    """
    relative_position = relative_position.astype(jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
    if_large = max_exact + (
        log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, if_large)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias: scale * x / sqrt(mean(x^2) + eps).

    The variance is computed in float32; the normalised input is cast to the parameter dtype
    before the scale is applied (Hugging Face semantics).
    """

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., d] -> [..., d]."""
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        normed = (x * lax.rsqrt(variance + self.epsilon)).astype(self.param_dtype)
        return (scale * normed).astype(self.dtype)


register_norm(T5LayerNorm, "rms")  # LNFit and merging normalise its input as an RMS norm


class T5Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d_kv) scaling; relative position bias is an input.

    Self-attention when `key_value_states` is None, else attention over `key_value_states`.
    In `decode=True` mode the keys/values live in the "cache" collection: the first call (with
    the full target length, e.g. through `init_cache`) creates the cache (and fills the
    cross-attention keys/values from the encoder output); every later call appends its queries'
    keys/values at `cache_index`.
    """

    config: T5Config
    has_relative_attention_bias: bool = False
    bidirectional: bool = True

    def setup(self):
        c = self.config
        inner = c.num_heads * c.d_kv
        self.q = _dense(inner, ("embed", "joined_kv"), (c.d_model * c.d_kv) ** -0.5, c)
        self.k = _dense(inner, ("embed", "joined_kv"), c.d_model**-0.5, c)
        self.v = _dense(inner, ("embed", "joined_kv"), c.d_model**-0.5, c)
        self.o = _dense(c.d_model, ("joined_kv", "embed"), inner**-0.5, c)
        if self.has_relative_attention_bias:
            self.relative_attention_bias = nn.Embed(
                c.relative_attention_num_buckets,
                c.num_heads,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.normal(c.d_model**-0.5), ("relpos_buckets", "heads")
                ),
            )
        self.dropout = Dropout(c.dropout_rate)

    def compute_bias(self, query_length: int, decode: bool = False) -> Array:
        """Relative position bias [1, heads, query_length, key_length] for self-attention.

        With an existing decode cache, queries start at the cache index and keys span the cache.
        """
        offset, key_length = 0, query_length
        if decode and self.has_variable("cache", "cached_key"):
            offset = self.get_variable("cache", "cache_index")
            key_length = self.get_variable("cache", "cached_key").shape[1]
        return self.bias_at(jnp.arange(query_length) + offset, jnp.arange(key_length))

    def bias_at(self, query_positions: Array, key_positions: Array) -> Array:
        """Relative position bias [1, heads, q, k] of int query positions [q] over key positions [k]."""
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None],
            bidirectional=self.bidirectional,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        values = self.relative_attention_bias(buckets)  # [q, k, heads]
        return jnp.transpose(values, (2, 0, 1))[None]

    def __call__(
        self,
        hidden_states: Array,
        key_value_states: Array | None = None,
        mask: Array | None = None,
        position_bias: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """hidden_states [b, q, d], key_value_states [b, k, d] | None,
        mask bool broadcastable to [b, heads, q, k], position_bias [1|b, heads, q, k] -> [b, q, d].
        """
        c = self.config
        batch, query_length = hidden_states.shape[:2]
        query = self._heads(self.q(hidden_states))
        if key_value_states is not None and decode:
            key, value = self._cross_cache(key_value_states)
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key, value = self._heads(self.k(source)), self._heads(self.v(source))
            if decode:
                key, value, mask = self._self_cache(key, value, mask)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)
        if position_bias is not None:
            scores = scores + position_bias
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(c.dtype)
        weights = self.dropout(weights, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        context = nn.with_logical_constraint(context, ("batch", "length", "heads", "kv"))
        return self.o(context.reshape(batch, query_length, c.num_heads * c.d_kv))

    def _heads(self, x: Array) -> Array:
        """[b, l, heads * d_kv] -> [b, l, heads, d_kv]."""
        x = x.reshape(*x.shape[:2], self.config.num_heads, self.config.d_kv)
        return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))

    def _cross_cache(self, source: Array) -> tuple[Array, Array]:
        """Cross-attention keys/values, computed from the encoder output once per cache."""
        if not self.has_variable("cache", "cross_key"):
            self.put_variable("cache", "cross_key", self._heads(self.k(source)))
            self.put_variable("cache", "cross_value", self._heads(self.v(source)))
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _self_cache(self, key: Array, value: Array, mask: Array | None) -> tuple[Array, Array, Array | None]:
        """Writes this step's keys/values into the cache; returns all cached keys/values and the
        causal mask over cache positions. The call that creates the cache passes through."""
        if not self.has_variable("cache", "cached_key"):
            self.put_variable("cache", "cached_key", jnp.zeros_like(key))
            self.put_variable("cache", "cached_value", jnp.zeros_like(value))
            self.put_variable("cache", "cache_index", jnp.array(0, jnp.int32))
            return key, value, mask
        index, step = self.get_variable("cache", "cache_index"), key.shape[1]
        key = lax.dynamic_update_slice(self.get_variable("cache", "cached_key"), key, (0, index, 0, 0))
        value = lax.dynamic_update_slice(self.get_variable("cache", "cached_value"), value, (0, index, 0, 0))
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
        self.put_variable("cache", "cache_index", index + step)
        causal = jnp.arange(key.shape[1])[None, :] <= index + jnp.arange(step)[:, None]
        return key, value, causal[None, None]


class T5DenseReluDense(nn.Module):
    """The FFN: wo(dropout(act(wi x))), or gated: wo(dropout(act(wi_0 x) * wi_1 x)). [b, l, d] -> [b, l, d]."""

    config: T5Config

    def setup(self):
        c = self.config
        if c.is_gated_act:
            self.wi_0 = _dense(c.d_ff, ("embed", "mlp"), c.d_model**-0.5, c)
            self.wi_1 = _dense(c.d_ff, ("embed", "mlp"), c.d_model**-0.5, c)
        else:
            self.wi = _dense(c.d_ff, ("embed", "mlp"), c.d_model**-0.5, c)
        self.wo = _dense(c.d_model, ("mlp", "embed"), c.d_ff**-0.5, c)
        self.dropout = Dropout(c.dropout_rate)

    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        c = self.config
        if c.is_gated_act:
            hidden = c.activation(self.wi_0(x)) * self.wi_1(x)
        else:
            hidden = c.activation(self.wi(x))
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        return self.wo(self.dropout(hidden, deterministic=deterministic))


class T5LayerSelfAttention(nn.Module):
    """x + dropout(SelfAttention(layer_norm(x))); block 0 computes the position bias."""

    config: T5Config
    has_relative_attention_bias: bool
    bidirectional: bool

    def setup(self):
        self.layer_norm = _layer_norm(self.config)
        self.SelfAttention = T5Attention(self.config, self.has_relative_attention_bias, self.bidirectional)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(
        self, x: Array, mask: Array | None, position_bias: Array | None, deterministic: bool, decode: bool
    ) -> tuple[Array, Array | None]:
        """x [b, q, d] -> (x [b, q, d], position_bias [1, heads, q, k] shared with later blocks)."""
        if position_bias is None and self.has_relative_attention_bias:
            position_bias = self.SelfAttention.compute_bias(x.shape[1], decode)
        y = self.SelfAttention(
            self.layer_norm(x), mask=mask, position_bias=position_bias, deterministic=deterministic, decode=decode
        )
        return x + self.dropout(y, deterministic=deterministic), position_bias


class T5LayerCrossAttention(nn.Module):
    """x + dropout(EncDecAttention(layer_norm(x), encoder_hidden_states)); no position bias."""

    config: T5Config

    def setup(self):
        self.layer_norm = _layer_norm(self.config)
        self.EncDecAttention = T5Attention(self.config)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(
        self, x: Array, encoder_hidden_states: Array, encoder_mask: Array | None, deterministic: bool, decode: bool
    ) -> Array:
        y = self.EncDecAttention(
            self.layer_norm(x), encoder_hidden_states, mask=encoder_mask, deterministic=deterministic, decode=decode
        )
        return x + self.dropout(y, deterministic=deterministic)


class T5LayerFF(nn.Module):
    """x + dropout(DenseReluDense(layer_norm(x)))."""

    config: T5Config

    def setup(self):
        self.layer_norm = _layer_norm(self.config)
        self.DenseReluDense = T5DenseReluDense(self.config)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(self, x: Array, deterministic: bool) -> Array:
        y = self.DenseReluDense(self.layer_norm(x), deterministic=deterministic)
        return x + self.dropout(y, deterministic=deterministic)


class T5Block(nn.Module):
    """Encoder block (layer_0 self-attn, layer_1 FFN) or decoder block (+ layer_1 cross-attn, layer_2 FFN).

    As the body of the stack's nn.scan (`scan_body`) it returns (x, None): x is the carry, and the
    position bias, an input of every block after block 0, is not stacked as an output.
    """

    config: T5Config
    is_decoder: bool
    has_relative_attention_bias: bool
    scan_body: bool = False

    def setup(self):
        layers: list[nn.Module] = [
            T5LayerSelfAttention(self.config, self.has_relative_attention_bias, bidirectional=not self.is_decoder)
        ]
        if self.is_decoder:
            layers.append(T5LayerCrossAttention(self.config))
        layers.append(T5LayerFF(self.config))
        self.layer = layers  # named layer_0, layer_1[, layer_2]

    def __call__(
        self,
        x: Array,
        mask: Array | None,
        position_bias: Array | None,
        encoder_hidden_states: Array | None = None,
        encoder_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> tuple[Array, Array | None]:
        x, position_bias = self.layer[0](x, mask, position_bias, deterministic, decode)
        if self.is_decoder:
            x = self.layer[1](x, encoder_hidden_states, encoder_mask, deterministic, decode)
        x = self.layer[-1](x, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, None) if self.scan_body else (x, position_bias)

    def position_bias(self, query_positions: Array, key_positions: Array) -> Array:
        """Block 0's relative position bias [1, heads, q, k] (positions int [q], [k]), for a
        scanned stack, whose blocks all take it as an input."""
        return self.layer[0].SelfAttention.bias_at(query_positions, key_positions)


def _block_class(config: T5Config, in_scan: bool) -> type[T5Block]:
    """T5Block, or with `config.remat` its rematerialised form (jax.checkpoint of each call, with
    deterministic and decode, arguments 6 and 7 counting self, static; inside a scan XLA cannot merge
    the recomputation away, so it needs no CSE barrier)."""
    if config.remat == "none":
        return T5Block
    return nn.remat(T5Block, static_argnums=(6, 7), policy=REMAT_POLICIES[config.remat], prevent_cse=not in_scan)


SCANNED_BLOCKS = "block_scan"  # the module (and params subtree) of a stack's scanned blocks
RELATIVE_TABLE = ("layer_0", "SelfAttention", "relative_attention_bias")  # in block_0, outside the scan


class T5Stack(nn.Module):
    """dropout(embeddings) -> blocks -> final_layer_norm -> dropout. [b, l, d] -> [b, l, d].

    With `config.scan_layers`, the blocks run as one nn.scan module `block_scan` whose params (and
    every other collection: the cache, the deltas) carry the block index as a leading axis, so the
    stack compiles one block body however deep it is; block_0 then holds only the relative position
    table, whose bias the stack computes before the scan and hands to every block.
    """

    config: T5Config
    is_decoder: bool

    def setup(self):
        c = self.config
        depth = c.num_decoder_layers if self.is_decoder else c.num_layers
        if c.scan_layers:
            self.block = [T5Block(c, self.is_decoder, has_relative_attention_bias=True)]  # the table only
            self.block_scan = nn.scan(
                _block_class(c, in_scan=True),
                variable_axes={True: 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * 6,
                length=depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(c, self.is_decoder, has_relative_attention_bias=False, scan_body=True)
        else:
            self.block = [_block_class(c, in_scan=False)(c, self.is_decoder, has_relative_attention_bias=i == 0)
                          for i in range(depth)]
        self.final_layer_norm = _layer_norm(c)
        self.dropout = Dropout(c.dropout_rate)

    def __call__(
        self,
        inputs_embeds: Array,
        mask: Array | None,
        encoder_hidden_states: Array | None = None,
        encoder_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        x = self.dropout(inputs_embeds, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        if self.config.scan_layers:
            position_bias = self.block[0].position_bias(*self._scanned_positions(x.shape[1], decode))
            x, _ = self.block_scan(x, mask, position_bias, encoder_hidden_states, encoder_mask, deterministic, decode)
        else:
            position_bias = None
            for block in self.block:
                x, position_bias = block(
                    x, mask, position_bias, encoder_hidden_states, encoder_mask, deterministic, decode
                )
        return self.dropout(self.final_layer_norm(x), deterministic=deterministic)

    def _scanned_positions(self, query_length: int, decode: bool) -> tuple[Array, Array]:
        """Query and key positions (int [q], [k]) of a scanned stack's position bias. While decoding,
        the stack keeps them in its own "cache" entries (the blocks' cache indices are stacked inside
        the scan), created, like the blocks' caches, by the call that sizes the cache (`init_cache`)."""
        queries = jnp.arange(query_length)
        if not decode:
            return queries, queries
        if not self.has_variable("cache", "key_positions"):
            self.put_variable("cache", "key_positions", queries)
            self.put_variable("cache", "position_index", jnp.array(0, jnp.int32))
            return queries, queries
        index = self.get_variable("cache", "position_index")
        self.put_variable("cache", "position_index", index + query_length)
        return queries + index, self.get_variable("cache", "key_positions")


class T5ForConditionalGeneration(nn.Module):
    """T5 encoder-decoder with a language-model head. Dropout needs rngs={"dropout": key}."""

    config: T5Config

    def setup(self):
        c = self.config
        self.shared = nn.Embed(
            c.vocab_size,
            c.d_model,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        )
        self.encoder = T5Stack(c, is_decoder=False)
        self.decoder = T5Stack(c, is_decoder=True)
        if not c.tie_word_embeddings:
            self.lm_head = _dense(c.vocab_size, ("embed", "vocab"), 1.0, c)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        decoder_input_ids: Array,
        decoder_attention_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """input_ids/attention_mask [b, s], decoder_input_ids/decoder_attention_mask [b, t] -> logits [b, t, vocab]."""
        encoded = self.encode(input_ids, attention_mask, deterministic=deterministic)
        return self.decode(
            decoder_input_ids, encoded, attention_mask, decoder_attention_mask, deterministic=deterministic
        )

    def encode(self, input_ids: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        """input_ids, attention_mask [b, s] -> encoder hidden states [b, s, d_model]."""
        mask = attention_mask.astype(bool)[:, None, None, :]
        return self.encoder(self.shared(input_ids), mask, deterministic=deterministic)

    def decode(
        self,
        decoder_input_ids: Array,
        encoder_hidden_states: Array,
        encoder_attention_mask: Array,
        decoder_attention_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """decoder_input_ids [b, t], encoder_hidden_states [b, s, d], encoder_attention_mask [b, s]
        -> logits [b, t, vocab]. With `decode=True` it reads and extends the "cache" collection
        (pass `mutable=["cache"]`); create the cache first with `init_cache`."""
        length = decoder_input_ids.shape[1]
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if decoder_attention_mask is not None:
            mask = mask & decoder_attention_mask.astype(bool)[:, None, None, :]
        encoder_mask = encoder_attention_mask.astype(bool)[:, None, None, :]
        hidden = self.decoder(
            self.shared(decoder_input_ids), mask, encoder_hidden_states, encoder_mask, deterministic, decode
        )
        return self.logits(hidden)

    def init_cache(self, max_length: int, encoder_hidden_states: Array, encoder_attention_mask: Array) -> Array:
        """Creates the decode cache for `max_length` target tokens (call with mutable=["cache"]).

        Runs the decoder once over a dummy target to size the cache and stores the cross-attention
        keys/values of `encoder_hidden_states`, so it must get the real encoder output.
        """
        dummy = jnp.zeros((encoder_hidden_states.shape[0], max_length), jnp.int32)
        return self.decode(dummy, encoder_hidden_states, encoder_attention_mask, decode=True)

    def logits(self, hidden: Array) -> Array:
        """Decoder output [b, t, d] -> logits [b, t, vocab] (tied: scaled by d_model**-0.5)."""
        if self.config.tie_word_embeddings:
            logits = self.shared.attend(hidden * self.config.d_model**-0.5)
        else:
            logits = self.lm_head(hidden)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


# --------------------------------------------------------------------------------------------
# Shapes, counts, logical axes, initialisation


def scanned_layers(config: T5Config) -> tuple[ScannedLayers, ...]:
    """The blocks that each stack runs under nn.scan (none without `config.scan_layers`): what
    `deltas.scan.stack_layers` turns the unscanned params (and deltas) into the scanned layout with."""
    if not config.scan_layers:
        return ()
    depths = (("encoder", config.num_layers), ("decoder", config.num_decoder_layers))
    return tuple(ScannedLayers((stack,), "block_", 0, depth, SCANNED_BLOCKS, kept=(RELATIVE_TABLE,))
                 for stack, depth in depths)


@functools.lru_cache(maxsize=32)
def _boxed_param_shapes(config: T5Config) -> Any:
    model = T5ForConditionalGeneration(config)
    ids = jnp.ones((1, 1), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids, ids)["params"])


def param_shapes(config: T5Config) -> Any:
    """The params pytree as `jax.ShapeDtypeStruct`s, traced with `jax.eval_shape` (no weights)."""
    return nn.unbox(_boxed_param_shapes(config))


def logical_axes(config: T5Config) -> Any:
    """The params pytree of `PartitionSpec`s of logical axis names (e.g. ('embed', 'joined_kv'))."""
    return nn.get_partition_spec(_boxed_param_shapes(config))


def count_params(config: T5Config, vocab_size: int | None = None) -> int:
    """Number of parameters; `vocab_size` keeps only that many embedding (and lm_head) rows."""
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(param_shapes(config)))


def init_params(config: T5Config, rng: Array) -> dict[str, Any]:
    """Random params (Hugging Face init scales) as a plain nested dict of arrays."""
    ids = jnp.ones((1, 1), jnp.int32)
    variables = jax.jit(T5ForConditionalGeneration(config).init)(rng, ids, ids, ids, ids)
    return nn.unbox(variables["params"])


__all__ = [
    "PRESETS",
    "T5Attention",
    "T5Config",
    "T5ConfigError",
    "T5DenseReluDense",
    "T5ForConditionalGeneration",
    "T5LayerNorm",
    "count_params",
    "get_config",
    "init_params",
    "logical_axes",
    "param_shapes",
    "relative_position_bucket",
    "scanned_layers",
]
