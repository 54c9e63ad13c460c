"""Folding deltas into the backbone: the merged model reproduces the injected one."""

from __future__ import annotations

import jax
import numpy as np

from deltas_reference import make_candidates, random_delta

from s3delta_jax.deltas import Rule, expand, make_candidate, merge_deltas, position_table, with_deltas
from s3delta_jax.models.t5.spaces import SPACES as T5_SPACES


def merged_and_injected(model_apply, params, candidates, delta, *args):
    """(merged params, unmerged candidates, injected output, merged model's output)."""
    merged, unmerged = merge_deltas(params, candidates, delta)

    @jax.jit
    def outputs(params, merged, delta):
        injected = with_deltas(model_apply, candidates, delta)({"params": params}, *args)
        return injected, with_deltas(model_apply, unmerged, delta)({"params": merged}, *args)

    return (merged, unmerged, *outputs(params, merged, delta))


def test_merge_on_the_custom_model(tinynet):
    specs = [
        ("embed", "lora", {"r": 2}),
        ("mixer_0/norm", "lnfit", {}),  # LayerNorm: into its scale
        ("mixer_0/norm", "bitfit", {}),  # ... and its bias
        ("mixer_0/up", "lora", {}),
        ("mixer_0/up", "bitfit", {}),  # Dense with a bias
        ("mixer_0/down", "bitfit", {}),  # Dense without a bias: stays injected
        ("mixer_1", "low_rank_adapter", {"reduction": 2}),  # stays injected
        ("mixer_1/up", "bitfit", {}),  # stays: the adapter at the same place would see it
        ("mixer_1/up", "adapter", {"bottleneck": 2}),
        ("final", "lnfit", {}),  # RMSNorm
        ("head", "bitfit", {}),
    ]
    candidates = make_candidates(tinynet.positions, specs)
    delta = random_delta(candidates, scale=0.3)
    merged, unmerged, injected, rebuilt = merged_and_injected(tinynet.model.apply, tinynet.params, candidates, delta, tinynet.x)
    assert [c.name for c in unmerged] == [
        "mixer_0/down:bitfit", "mixer_1:low_rank_adapter", "mixer_1/up:bitfit", "mixer_1/up:adapter",
    ]
    backbone = tinynet.model.apply({"params": tinynet.params}, tinynet.x)
    assert np.abs(injected - backbone).max() > 1e-2
    np.testing.assert_allclose(rebuilt, injected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        merged["mixer_0"]["norm"]["scale"], tinynet.params["mixer_0"]["norm"]["scale"] + delta["mixer_0"]["norm"]["lnfit"]["s"]
    )
    np.testing.assert_array_equal(merged["mixer_1"]["up"]["bias"], tinynet.params["mixer_1"]["up"]["bias"])


def test_merge_into_a_registered_norms_own_parameters(gammanet):
    model, params, x, positions = gammanet
    candidates = expand([[Rule("gn", "norm", "lnfit"), Rule("gn", "norm", "bitfit")]], positions).candidates
    delta = random_delta(candidates)
    merged, unmerged, injected, rebuilt = merged_and_injected(model.apply, params, candidates, delta, x)
    assert unmerged == []
    np.testing.assert_allclose(merged["gn"]["beta"], params["gn"]["beta"] + delta["gn"]["bitfit"]["b"], rtol=1e-6)
    np.testing.assert_allclose(rebuilt, injected, rtol=1e-5, atol=1e-5)


def test_merge_on_t5(tiny_t5):
    candidates = expand(T5_SPACES["s3pet_mix"], tiny_t5.positions).candidates
    candidates.append(make_candidate(len(candidates), position_table(tiny_t5.positions)["shared@attend"], "bitfit", {}))
    delta = random_delta(candidates, scale=0.1)
    b = tiny_t5.batch
    merged, unmerged, injected, rebuilt = merged_and_injected(
        tiny_t5.model.apply, tiny_t5.params, candidates, delta, b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    )
    # T5 linears and norms have no bias: every BitFit (incl. the LM head's) and every adapter stays injected.
    assert {c.delta_type for c in unmerged} == {"bitfit", "low_rank_adapter"}
    assert len(unmerged) == sum(c.delta_type in ("bitfit", "low_rank_adapter") for c in candidates)
    np.testing.assert_allclose(rebuilt, injected, rtol=1e-5, atol=1e-5)
