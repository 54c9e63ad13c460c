"""Position discovery by tracing: custom models, registered norms, T5 against Hugging Face."""

from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.deltas import Position, PositionError, discover_positions, hf_module_name, register_norm


def test_custom_model_positions_in_call_order(tinynet):
    got = [(p.name, p.kind, p.in_features, p.out_features, p.module_type, p.norm_kind, p.has_bias) for p in tinynet.positions]
    expected = [("embed", "linear", 3, 4, "Dense", None, True)]
    for i in range(2):
        expected += [
            (f"mixer_{i}", "block", 4, 4, "Mixer", None, False),  # a block comes before its children
            (f"mixer_{i}/norm", "norm", 4, 4, "LayerNorm", "layernorm", True),
            (f"mixer_{i}/up", "linear", 4, 8, "Dense", None, True),
            (f"mixer_{i}/down", "linear", 8, 4, "Dense", None, False),  # the Dropout is no position
        ]
    expected += [("final", "norm", 4, 4, "RMSNorm", "rms", False), ("head", "linear", 4, 5, "Dense", None, True)]
    assert got == expected
    norms = {p.name: p.epsilon for p in tinynet.positions if p.kind == "norm"}
    assert norms == {"mixer_0/norm": 1e-5, "mixer_1/norm": 1e-5, "final": 1e-6}


class PairBlock(nn.Module):
    """Returns a tuple: not a block position (its Dense still is a linear)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="proj")(x), x


class Widen(nn.Module):
    """Changes the last dimension: not a block position."""

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([x, x], axis=-1)


class KeywordNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, scale: float, deterministic: bool):
        y, _ = PairBlock(name="pair")(x)
        y = Widen(name="widen")(y)
        y = nn.Dropout(0.1)(y, deterministic=deterministic)
        return nn.Dense(3, name="out")(inputs=y * scale)  # input passed by keyword


def test_static_arguments_keyword_inputs_and_non_block_modules():
    positions = discover_positions(KeywordNet(), jax.ShapeDtypeStruct((2, 5), jnp.float32), scale=2.0, deterministic=True)
    assert [(p.name, p.kind, p.in_features, p.out_features) for p in positions] == [
        ("pair/proj", "linear", 5, 2),
        ("out", "linear", 4, 3),
    ]


class ScaleNorm(nn.Module):
    """A custom RMS norm with its own attribute and parameter names."""

    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.ones, (x.shape[-1],))
        return gamma * x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps)


class NormNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="proj")(ScaleNorm(eps=0.25, name="custom_norm")(x))


def test_custom_norm_is_a_block_until_registered():
    x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
    before = discover_positions(NormNet(), x)
    assert (before[0].name, before[0].kind) == ("custom_norm", "block")
    register_norm(ScaleNorm, "rms", epsilon_attr="eps", scale_param="gamma")
    after = discover_positions(NormNet(), x)[0]
    assert (after.kind, after.norm_kind, after.epsilon, after.scale_param, after.bias_param) == ("norm", "rms", 0.25, "gamma", None)


def test_register_norm_rejects_bad_input():
    with pytest.raises(PositionError, match="kind must be 'rms' or 'layernorm'"):
        register_norm(ScaleNorm, "batch")
    with pytest.raises(PositionError, match="not a flax.linen Module class"):
        register_norm(int, "rms")


def test_t5_large_position_counts(t5_large_positions):
    kinds = collections.Counter((p.kind, p.module_type) for p in t5_large_positions)
    assert kinds == {
        ("linear", "Dense"): 24 * 6 + 24 * 10,  # q k v o wi wo (+ cross-attention q k v o)
        ("linear", "Embed"): 1,  # the tied LM head: shared.attend
        ("norm", "T5LayerNorm"): 24 * 2 + 24 * 3 + 2,
        ("block", "T5Attention"): 24 + 24 * 2,
        ("block", "T5DenseReluDense"): 48,
        ("block", "T5LayerFF"): 48,
        ("block", "T5LayerCrossAttention"): 24,
        ("block", "T5Stack"): 2,
    }
    by_name = {p.name: p for p in t5_large_positions}
    wi = by_name["decoder/block_23/layer_2/DenseReluDense/wi"]
    assert (wi.in_features, wi.out_features, wi.has_bias) == (1024, 4096, False)
    norm = by_name["decoder/block_20/layer_1/layer_norm"]
    assert (norm.norm_kind, norm.epsilon, norm.scale_param) == ("rms", 1e-6, "scale")
    head = by_name["shared@attend"]
    assert (head.in_features, head.out_features, head.method) == (1024, 32100, "attend")


def _hf_t5_modules(config):
    """(name, class name) of a Hugging Face T5 with this config's shape, in named_modules order."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**{
        k: getattr(config, k) for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                                         "relative_attention_num_buckets", "relative_attention_max_distance")
    }))
    return [(name, type(module).__name__) for name, module in hf.named_modules()]


def test_t5_positions_are_the_hf_modules_that_matter(tiny_t5):
    """Every HF Linear, T5LayerNorm, attention and FFN module is a position (lm_head = shared@attend),
    in HF named_modules order, except that a sub-layer's layer_norm is called (so listed) before
    its sibling attention / FFN block, while HF defines it after."""
    wanted = {"Linear", "T5LayerNorm", "T5Attention", "T5DenseActDense"}
    hf_order = [name for name, cls in _hf_t5_modules(tiny_t5.config) if cls in wanted]
    ours = [hf_module_name(p.name) for p in tiny_t5.positions]
    ours = [name for name in ours if name in set(hf_order)]
    assert sorted(ours) == sorted(hf_order)
    # Move each layer_norm in front of its sibling block: then the orders agree exactly.
    reordered = list(hf_order)
    for name in hf_order:
        if name.endswith(".layer_norm") and ".layer." in name:
            parent = name.rsplit(".", 1)[0]
            reordered.remove(name)
            first_sibling = next(i for i, n in enumerate(reordered) if n.startswith(parent + "."))
            reordered.insert(first_sibling, name)
    assert ours == reordered
    assert [n for n in ours if not n.endswith("layer_norm")] == [n for n in hf_order if not n.endswith("layer_norm")]


def test_hf_module_names():
    position = Position(("decoder", "block_20", "layer_1", "layer_norm"), "norm", 8, 8, "T5LayerNorm")
    assert hf_module_name(position.name) == "decoder.block.20.layer.1.layer_norm"
    assert hf_module_name("encoder/block_3/layer_1/DenseReluDense/wi_0") == "encoder.block.3.layer.1.DenseReluDense.wi_0"
    assert hf_module_name("shared@attend") == "lm_head"


def test_positions_of_a_cached_decode_call(tiny_t5):
    """Tracing model.apply with variables (shapes only) and a mutable cache finds the decoder positions."""
    c = tiny_t5.config
    encoded = jax.ShapeDtypeStruct((2, 7, c.d_model), jnp.float32)
    mask = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tiny_t5.params)
    positions = discover_positions(
        tiny_t5.model, 4, encoded, mask, variables={"params": params}, method="init_cache", mutable=["cache"]
    )
    names = [p.name for p in positions]
    assert names[0] == "decoder" and names[-1] == "shared@attend"
    assert not any(name.startswith("encoder") for name in names)
    assert "decoder/block_0/layer_1/EncDecAttention/k" in names


def test_a_model_without_positions_is_an_error():
    class Identity(nn.Module):
        def __call__(self, x):
            return x

    with pytest.raises(PositionError, match="no Dense, norm or block calls"):
        discover_positions(Identity(), np.zeros((2, 3), np.float32))
