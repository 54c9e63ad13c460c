"""The paper's Table 2 baselines on t5-large (reference section 2)."""

from __future__ import annotations

import pytest

from s3delta_jax.deltas import BASELINES, adapter, bitfit, lnfit, lora_qv


@pytest.mark.parametrize(
    "name, count, params",
    [
        ("bitfit", 48 * 6 + 122 + 1, 599_396),
        ("adapter_lr", 96, 304_128),
        ("lora_qv_r1", 96, 196_608),
        ("lora_qv_r8", 96, 1_572_864),
        ("adapter", 96, 4_819_200),
        ("lnfit", 122, 124_928),
    ],
)
def test_baseline_sizes_on_t5_large(t5_large_positions, name, count, params):
    candidates = BASELINES[name](t5_large_positions)
    assert (len(candidates), sum(c.size for c in candidates)) == (count, params)


def test_baseline_contents(t5_large_positions):
    heads = [c for c in bitfit(t5_large_positions) if c.position.name == "shared@attend"]
    assert [(c.delta_type, c.size) for c in heads] == [("bitfit", 32100)]
    assert not any("EncDecAttention" in c.position.name for c in bitfit(t5_large_positions))
    assert {c.position.path[-1] for c in lora_qv(t5_large_positions, r=1)} == {"q", "v"}
    assert {c.kwargs["bottleneck"] for c in adapter(t5_large_positions)} == {24}
    assert sum("final_layer_norm" in c.position.name for c in lnfit(t5_large_positions)) == 2
