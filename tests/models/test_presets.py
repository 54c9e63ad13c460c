"""Known configs: parameter counts from shapes alone (no weights), HF config round trips."""

from __future__ import annotations

import dataclasses

import flax
import jax
import numpy as np
import pytest
import torch
import transformers

from s3delta_jax.models import t5

# Sizes published with the Hugging Face checkpoints (model cards / num_parameters()).
PUBLISHED_SIZES = {
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-3b": 2_851_598_336,
    "t5-11b": 11_307_321_344,
    "google/flan-t5-small": 76_961_152,
    "google/flan-t5-base": 247_577_856,
    "google/flan-t5-large": 783_150_080,
    "google/flan-t5-xl": 2_849_757_184,
    "google/flan-t5-xxl": 11_135_332_352,
}


def _analytic_count(c: t5.T5Config) -> int:
    """Parameters of a T5 written out by hand from its config."""
    attention = 4 * c.d_model * c.num_heads * c.d_kv
    ffn = (3 if c.is_gated_act else 2) * c.d_model * c.d_ff
    encoder_block = attention + ffn + 2 * c.d_model
    decoder_block = 2 * attention + ffn + 3 * c.d_model
    position_tables = 2 * c.relative_attention_num_buckets * c.num_heads
    heads = 1 if c.tie_word_embeddings else 2
    return (
        heads * c.vocab_size * c.d_model
        + c.num_layers * encoder_block
        + c.num_decoder_layers * decoder_block
        + position_tables
        + 2 * c.d_model  # final layer norms
    )


def test_reference_backbone_counts():
    """Reference section 1.1: t5-large, and t5-large resized to the 32100-id tokenizer."""
    assert t5.count_params(t5.get_config("t5-small")) == 60_506_624
    assert t5.count_params(t5.get_config("t5-large")) == 737_668_096
    assert t5.count_params(t5.get_config("t5-large"), vocab_size=32100) == 737_639_424


@pytest.mark.parametrize("name", list(t5.PRESETS))
def test_preset_counts_match_formula_and_published_sizes(name):
    config = t5.get_config(name)
    count = t5.count_params(config)
    assert count == _analytic_count(config)
    v1_1_twin = name.replace("t5-v1_1", "flan-t5")  # same architecture as FLAN-T5
    assert count == PUBLISHED_SIZES[v1_1_twin]


@pytest.mark.parametrize("name", ["t5-small", "t5-large"])
def test_counts_match_transformers_on_meta_device(name):
    config = t5.get_config(name)
    with torch.device("meta"):
        hf_model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config.to_hf_dict()))
    assert t5.count_params(config) == sum(p.numel() for p in hf_model.parameters())


@pytest.mark.parametrize("name", list(t5.PRESETS))
def test_hf_config_round_trip(name):
    """Through transformers' own T5Config (which rewrites the tie flag in version 5)."""
    config = t5.get_config(name)
    hf_config = transformers.T5Config(**config.to_hf_dict())
    assert t5.T5Config.from_hf_dict(hf_config.to_dict()) == config
    assert t5.T5Config.from_hf_dict(config.to_hf_dict()) == config


def test_get_config_names_and_errors():
    assert t5.get_config("google-t5/t5-large") == t5.PRESETS["t5-large"]
    assert t5.get_config("t5-small", dropout_rate=0.0).dropout_rate == 0.0
    with pytest.raises(t5.T5ConfigError, match="unknown T5 preset 't5-huge'.*t5-small"):
        t5.get_config("t5-huge")
    with pytest.raises(t5.T5ConfigError, match="feed_forward_proj='gated-tanh'"):
        t5.T5Config(feed_forward_proj="gated-tanh")
    assert t5.T5Config(num_layers=3).num_decoder_layers == 3
    assert hash(t5.get_config("t5-small")) == hash(dataclasses.replace(t5.get_config("t5-small")))


def test_t5_large_shapes_and_logical_axes_without_weights():
    config = t5.get_config("t5-large", vocab_size=32100)
    shapes = flax.traverse_util.flatten_dict(t5.param_shapes(config))
    axes = flax.traverse_util.flatten_dict(t5.logical_axes(config))
    # shared + encoder (8 per block, bias table, final norm) + decoder (13 per block, bias table, final norm)
    assert shapes.keys() == axes.keys() and len(shapes) == 1 + (24 * 8 + 1 + 1) + (24 * 13 + 1 + 1)
    assert shapes[("shared", "embedding")].shape == (32100, 1024)
    assert shapes[("encoder", "block_23", "layer_1", "DenseReluDense", "wi", "kernel")].shape == (1024, 4096)
    assert tuple(axes[("decoder", "block_5", "layer_1", "EncDecAttention", "q", "kernel")]) == ("embed", "joined_kv")
    assert tuple(axes[("decoder", "final_layer_norm", "scale")]) == ("embed",)


def test_init_params_follow_the_shapes():
    config = t5.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=2)
    params = t5.init_params(config, jax.random.key(0))
    shapes = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t5.param_shapes(config))
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params) == shapes
    assert isinstance(params["encoder"]["block_0"], dict)  # plain nested dicts, no boxes
    np.testing.assert_array_equal(params["decoder"]["final_layer_norm"]["scale"], np.ones(16))
    assert 0.5 < float(params["shared"]["embedding"].std()) < 1.5  # HF init: N(0, 1)
