"""A Flax BERT encoder, written here as "the user's own model" (s3delta_jax knows nothing about it).

Module names follow Hugging Face's `BertModel`, with list items written `layer_3`, so that Flax paths
read like the PyTorch names: `encoder.layer.3.attention.self.query` is `encoder/layer_3/attention/self/query`.

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    encoder/layer_{i}/attention/self/{query, key, value}        nn.Dense  H -> H
    encoder/layer_{i}/attention/output/{dense, LayerNorm}       nn.Dense  H -> H, then LN(x + residual)
    encoder/layer_{i}/intermediate/dense                        nn.Dense  H -> I, then the activation
    encoder/layer_{i}/output/{dense, LayerNorm}                 nn.Dense  I -> H, then LN(x + residual)

There is no pooler: the example pools by the attention-masked mean, as sentence-transformers does
for all-MiniLM-L6-v2, so the checkpoint's `pooler.*` weights are skipped on load.
`load_pretrained(model_dir)` reads `config.json` and `model.safetensors` of a Hugging Face BERT.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
# Checkpoint entries the encoder does not use: a position-index buffer and the unused pooler.
SKIPPED_PREFIXES = ("embeddings.position_ids", "pooler.")


class CheckpointError(ValueError):
    """A BERT config or checkpoint this example cannot load."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT `config.json` that the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Reads a Hugging Face `config.json` of model_type 'bert' with absolute position embeddings."""
        raw = json.loads(Path(path).read_text())
        if raw.get("model_type") != "bert" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{path}: need a BERT config with absolute position embeddings, got model_type "
                                  f"{raw.get('model_type')!r}, position_embedding_type {raw.get('position_embedding_type')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


def _layer_norm(config: BertConfig) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the one-pass form loses digits at eps 1e-12).
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name="LayerNorm")


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, deterministic: bool) -> jax.Array:
        """input_ids, token_type_ids int[B, L] -> f32[B, L, H]."""
        c = self.config
        positions = jnp.arange(input_ids.shape[1])[None, :]
        h = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids))
        return nn.Dropout(c.hidden_dropout_prob)(_layer_norm(c)(h), deterministic=deterministic)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        """hidden f32[B, L, H], mask_bias f32[B, 1, 1, L] (0 or a large negative) -> context f32[B, L, H]."""
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def project(name: str) -> jax.Array:
            return nn.Dense(c.hidden_size, name=name)(hidden).reshape(*hidden.shape[:-1], heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(head_dim) + mask_bias
        probs = nn.Dropout(c.attention_probs_dropout_prob)(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, value).reshape(hidden.shape)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual): Hugging Face's BertSelfOutput and BertOutput."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        """hidden f32[B, L, H or I], residual f32[B, L, H] -> f32[B, L, H]."""
        h = nn.Dense(self.config.hidden_size, name="dense")(hidden)
        h = nn.Dropout(self.config.hidden_dropout_prob)(h, deterministic=deterministic)
        return _layer_norm(self.config)(h + residual)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        context = BertSelfAttention(self.config, name="self")(hidden, mask_bias, deterministic)
        return BertResidualOutput(self.config, name="output")(context, hidden, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        """f32[B, L, H] -> f32[B, L, I]."""
        return ACTIVATIONS[self.config.hidden_act](nn.Dense(self.config.intermediate_size, name="dense")(hidden))


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        attended = BertAttention(self.config, name="attention")(hidden, mask_bias, deterministic)
        expanded = BertIntermediate(self.config, name="intermediate")(attended)
        return BertResidualOutput(self.config, name="output")(expanded, attended, deterministic)


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            hidden = BertLayer(self.config, name=f"layer_{i}")(hidden, mask_bias, deterministic)
        return hidden


class BertModel(nn.Module):
    """The BERT encoder. `apply(..., capture_intermediates=True)` exposes every layer's output."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids int[B, L] -> f32[B, L, H]."""
        hidden = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids, deterministic)
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(hidden.dtype).min).astype(hidden.dtype)
        return BertEncoder(self.config, name="encoder")(hidden, mask_bias, deterministic)


def num_params(params: Any) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def flax_path(hf_name: str) -> tuple[str, ...]:
    """'encoder.layer.3.attention.self.query.weight' -> ('encoder', 'layer_3', 'attention', 'self', 'query', 'kernel')."""
    parts = hf_name.replace("layer.", "layer_").split(".")
    module, leaf = parts[:-1], parts[-1]
    if leaf in ("gamma", "beta"):  # very old checkpoints name LayerNorm parameters like TF
        leaf = "weight" if leaf == "gamma" else "bias"
    if leaf == "weight":
        leaf = "scale" if module[-1] == "LayerNorm" else "embedding" if module[-1].endswith("_embeddings") else "kernel"
    return (*module, leaf)


def load_pretrained(model_dir: str | Path) -> tuple[BertModel, dict[str, Any]]:
    """(model, params) from a Hugging Face BERT folder (`config.json`, `model.safetensors`).

    Every encoder parameter must be in the checkpoint with its expected shape, and every checkpoint
    entry must be used (except `SKIPPED_PREFIXES`); torch Linear weights [out, in] become kernels [in, out].
    """
    model_dir = Path(model_dir)
    config = BertConfig.from_json(model_dir / "config.json")
    model = BertModel(config)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    expected = jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)["params"]
    wanted = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    tensors = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items() if not k.startswith(SKIPPED_PREFIXES)}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, tensor in tensors.items():
        path = flax_path(name)
        value = tensor.T if path[-1] == "kernel" else tensor
        if path not in wanted or wanted[path] != value.shape:
            raise CheckpointError(f"{model_dir}: checkpoint entry {name} {tensor.shape} has no place in the encoder")
        flat[path] = value.astype(np.float32)
    missing = sorted("/".join(p) for p in set(wanted) - set(flat))
    if missing:
        raise CheckpointError(f"{model_dir}: the checkpoint lacks {len(missing)} encoder parameters, e.g. {missing[:3]}")
    params: dict[str, Any] = {}
    for path, value in flat.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    return model, params
