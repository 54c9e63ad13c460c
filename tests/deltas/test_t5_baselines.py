"""The paper's Table 2 baselines on t5-large, as the T5 family's presets (reference section 2)."""

from __future__ import annotations

import pytest

from s3delta_jax.deltas import expand
from s3delta_jax.models.t5.spaces import BASELINES


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
    candidates = expand(BASELINES[name], t5_large_positions).candidates
    assert (len(candidates), sum(c.size for c in candidates)) == (count, params)


def test_baseline_contents(t5_large_positions):
    def baseline(name):
        return expand(BASELINES[name], t5_large_positions).candidates

    heads = [c for c in baseline("bitfit") if c.position.name == "shared@attend"]
    assert [(c.delta_type, c.size) for c in heads] == [("bitfit", 32100)]
    assert not any("EncDecAttention" in c.position.name for c in baseline("bitfit"))
    assert {c.position.path[-1] for c in baseline("lora_qv_r1")} == {"q", "v"}
    assert {c.kwargs["bottleneck"] for c in baseline("adapter")} == {24}
    assert sum("final_layer_norm" in c.position.name for c in baseline("lnfit")) == 2
