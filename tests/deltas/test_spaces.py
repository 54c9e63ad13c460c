"""Search-space rules and their expansion (reference sections 1.2 and 1.4)."""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.deltas import Rule, SpaceError, candidates_from_mask, discover_positions, expand, type_breakdown
from s3delta_jax.models import t5
from s3delta_jax.models.t5.spaces import SELF_LINEARS as T5_SELF_LINEARS
from s3delta_jax.models.t5.spaces import SPACES as T5_SPACES


def test_s3pet_mix_on_t5_large(t5_large_positions):
    expansion = expand(T5_SPACES["s3pet_mix"], t5_large_positions)
    assert len(expansion.candidates) == 916
    assert expansion.total_size == 1_881_088
    assert [c.index for c in expansion.candidates] == list(range(916))
    assert type_breakdown(expansion.candidates) == {
        "lnfit": {"count": 122, "params": 122 * 1024},
        "bitfit": {"count": 288 + 122, "params": 48 * (5 * 1024 + 4096) + 122 * 1024},
        "lora": {"count": 288, "params": 48 * (4 * 2048 + 2 * 5120)},
        "low_rank_adapter": {"count": 96, "params": 96 * 3168},
    }
    assert [(m.pass_index, m.count) for m in expansion.matches_per_rule] == [(0, 288), (0, 288), (0, 122), (0, 122), (1, 96)]
    # Per block: 18 encoder / 20 decoder modules; no cross-attention linear anywhere.
    per_block = collections.Counter("/".join(c.position.path[:2]) for c in expansion.candidates)
    assert {per_block[f"encoder/block_{i}"] for i in range(24)} == {18}
    assert {per_block[f"decoder/block_{i}"] for i in range(24)} == {20}
    assert not any("EncDecAttention" in c.position.name for c in expansion.candidates)
    assert per_block["decoder/final_layer_norm"] == 2


def test_expansion_order(t5_large_positions):
    """Pass 0 before pass 1; at one position parallel before sequential; positions in call order."""
    candidates = expand(T5_SPACES["s3pet_mix"], t5_large_positions).candidates
    passes = [c.pass_index for c in candidates]
    assert passes == sorted(passes) and passes.count(1) == 96
    assert [(c.position.name, c.delta_type) for c in candidates[:4]] == [
        ("encoder/block_0/layer_0/layer_norm", "lnfit"),
        ("encoder/block_0/layer_0/layer_norm", "bitfit"),
        ("encoder/block_0/layer_0/SelfAttention/q", "lora"),
        ("encoder/block_0/layer_0/SelfAttention/q", "bitfit"),
    ]
    assert [c.slot for c in candidates[:2]] == ["parallel", "sequential"]
    assert [c.position.name for c in candidates[820:822]] == [
        "encoder/block_0/layer_0/SelfAttention", "encoder/block_0/layer_1/DenseReluDense",
    ]
    order = {p.name: i for i, p in enumerate(t5_large_positions)}
    pass0 = [order[c.position.name] for c in candidates if c.pass_index == 0]
    assert pass0 == sorted(pass0)


def test_other_presets(t5_large_positions):
    lora = expand(T5_SPACES["s3pet_lora"], t5_large_positions)
    assert (len(lora.candidates), lora.total_size) == (288, 884_736)
    assert {c.delta_type for c in lora.candidates} == {"lora"}
    full = expand(T5_SPACES["mix_all_linear"], t5_large_positions)
    cross = [c for c in full.candidates if "EncDecAttention" in c.position.name]
    assert len(full.candidates) == 916 + len(cross) and len(cross) == 24 * 4 * 2
    assert full.total_size == 1_881_088 + 24 * 4 * (2048 + 1024)


def test_v1_1_wi_rule_matches_both_gates(tiny_t5):
    config = dataclasses.replace(tiny_t5.config, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    positions = discover_positions(t5.T5ForConditionalGeneration(config), ids, ids, ids, ids)
    lora = expand(T5_SPACES["s3pet_lora"], positions).candidates
    ffn = sorted({c.position.path[-1] for c in lora if "DenseReluDense" in c.position.name})
    assert ffn == ["wi_0", "wi_1", "wo"]
    assert len(lora) == 2 * 7  # 1 encoder + 1 decoder block x (q k v o wi_0 wi_1 wo)


def test_pattern_is_a_suffix_at_a_component_boundary(t5_large_positions):
    def names(pattern, kinds=("norm",)):
        return [c.position.name for c in expand([[Rule(pattern, kinds, "lnfit")]], t5_large_positions).candidates]

    assert len(names("layer_norm")) == 120 and len(names("final_layer_norm")) == 2
    assert names("^encoder/final_layer_norm") == ["encoder/final_layer_norm"]
    assert len(names("^decoder/.*/layer_1/layer_norm")) == 24


def test_rule_errors(t5_large_positions):
    with pytest.raises(SpaceError, match=r"pass 0 rule 1 Rule\('ayer_norm' \[norm\] -> lnfit\(\)\) matches no position"):
        expand([[Rule("layer_norm", ("norm",), "lnfit"), Rule("ayer_norm", ("norm",), "lnfit", key="x")]], t5_large_positions)
    with pytest.raises(SpaceError, match="lora cannot act on kinds \\['norm'\\]"):
        Rule("layer_norm", ("norm",), "lora")
    with pytest.raises(SpaceError, match="unknown delta type 'prefix'"):
        Rule("q", ("linear",), "prefix")
    with pytest.raises(SpaceError, match="unknown argument"):
        Rule("q", ("linear",), "lora", {"rank": 2})
    with pytest.raises(SpaceError, match="unterminated|missing"):
        Rule("(q", ("linear",), "lora")
    with pytest.raises(SpaceError, match="both put key 'lora' at encoder/block_0/layer_0/SelfAttention/q"):
        expand([[Rule("SelfAttention/q", "linear", "lora"), Rule("SelfAttention/(q|k)", "linear", "lora", {"r": 2})]], t5_large_positions)
    with pytest.raises(SpaceError, match="takes rules, not the preset name 'mix'"):
        expand("mix", t5_large_positions)


def test_two_deltas_of_one_type_with_distinct_keys(t5_large_positions):
    rules = [[Rule("SelfAttention/q", "linear", "lora"), Rule("SelfAttention/q", "linear", "lora", {"r": 4}, key="lora_r4")]]
    candidates = expand(rules, t5_large_positions).candidates
    assert [(c.key, c.size) for c in candidates[:2]] == [("lora", 2048), ("lora_r4", 4 * 2048)]


def test_candidates_from_mask(t5_large_positions):
    candidates = expand([[Rule(T5_SELF_LINEARS, "linear", "lora")]], t5_large_positions).candidates
    mask = np.zeros(len(candidates), bool)
    mask[[3, 10]] = True
    assert [c.index for c in candidates_from_mask(candidates, mask)] == [3, 10]
    with pytest.raises(SpaceError, match=r"mask must be bool\[288\], got int64\[288\]"):
        candidates_from_mask(candidates, mask.astype(np.int64))
