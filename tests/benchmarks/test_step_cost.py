"""benchmarks/step_cost.py on its tiniest case: the measurement's JSON schema, ratios that are positive,
finite and consistent with the raw numbers, and the checks that do not depend on timing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import peft_peer
import step_cost
from step_cost_setup import Case

from s3delta_jax.deltas import Rule

ESTIMATORS = ("first_order", "second_order_fd", "second_order_exact")
# One block per stack, three candidates (64 + 128 + 64 parameters), no dropout: every step compiles
# in seconds (compile time grows with the candidates in each pass of a step).
SPACE = ((Rule("decoder/final_layer_norm", "norm", "lnfit"), Rule("encoder/final_layer_norm", "norm", "bitfit"),
          Rule("decoder/block_0/layer_0/SelfAttention/q", "linear", "lora", {"r": 1})),)
TINIEST = Case("tiny", batch_size=2, source_length=8, target_length=4, steps=2, warmup=1, budget=100,
               num_layers=1, dropout_rate=0.0, space=SPACE)
MEASUREMENT_KEYS = {
    "median_step_seconds", "step_seconds", "compile_seconds", "trace_and_lower_seconds", "xla_compile_seconds",
    "compiled_memory", "device_peak_bytes", "device_peak_exact", "metrics_finite", "passes_per_step",
}
RATIO_KEYS = {
    "search_over_retrain_time", "search_over_retrain_memory", "search_over_retrain_compiled_memory",
    "search_over_retrain_temp_memory", "search_over_retrain_compile_time", "zeta_share_of_step",
}


def positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result():
    return step_cost.measure_case(TINIEST, ESTIMATORS)


def test_result_is_strict_json(result):
    assert json.loads(json.dumps(result, allow_nan=False)) == json.loads(json.dumps(result))


def test_every_step_has_its_measurements(result):
    retrain = result["retrain"]
    assert MEASUREMENT_KEYS | {"modules", "trainable_params"} <= retrain.keys()
    assert set(result["search"]) == set(ESTIMATORS)
    for measured in [retrain, *result["search"].values()]:
        assert len(measured["step_seconds"]) == TINIEST.steps
        assert min(measured["step_seconds"]) <= measured["median_step_seconds"] <= max(measured["step_seconds"])
        assert positive_finite(measured["median_step_seconds"]) and positive_finite(measured["compile_seconds"])
        assert measured["metrics_finite"] is True
        memory = measured["compiled_memory"]
        assert memory["total"] == memory["argument"] + memory["output"] + memory["temp"] - memory["alias"] > 0


def test_ratios_are_positive_finite_and_match_the_raw_numbers(result):
    retrain = result["retrain"]
    for estimator, measured in result["search"].items():
        assert RATIO_KEYS | MEASUREMENT_KEYS | {"memory_basis"} <= measured.keys(), estimator
        for key in RATIO_KEYS:
            assert positive_finite(measured[key]), (estimator, key, measured[key])
        assert measured["search_over_retrain_time"] == pytest.approx(
            measured["median_step_seconds"] / retrain["median_step_seconds"])
        if retrain["device_peak_bytes"] is None:  # CPU: the compiled footprint stands in
            assert measured["memory_basis"] == "xla_compiled"
            assert measured["search_over_retrain_memory"] == pytest.approx(
                measured["compiled_memory"]["total"] / retrain["compiled_memory"]["total"])
        # Every candidate is in the search step's state, so its executable needs more memory.
        assert measured["search_over_retrain_compiled_memory"] > 1.0


def test_structure_fits_the_budget(result):
    model, retrain = result["model"], result["retrain"]
    assert model["budget_params"] == TINIEST.budget
    assert 0 < retrain["trainable_params"] <= model["budget_params"] < model["search_space_params"]
    assert 0 < retrain["modules"] < model["candidates"]


def test_peer_counts_the_same_trainable_parameters_or_says_why_it_skipped(result):
    peer = result["peer"]
    if peft_peer.missing_peer_packages() is not None:
        assert peer == {"skipped": peft_peer.missing_peer_packages()}
        return
    # PEFT's LoRA and ours on self-attention q, v: counted by two frameworks independently.
    assert peer["same_trainable_params"] is True
    assert peer["peft"]["trainable_params"] == 2 * 2 * 8 * (64 + 64)  # 2 stacks x (q, v) x r (in + out)
    assert positive_finite(peer["ours_over_peft_time"])


def test_table_names_every_step(result):
    table = step_cost.format_case(result)
    assert all(f"search {e}" in table for e in ESTIMATORS) and "re-train" in table


def test_flags_override_the_preset():
    args = step_cost.parse_args(["--preset", "cpu-quick", "--model", "t5-small,t5-base", "--dtype",
                                 "float32,bfloat16", "--steps", "7", "--all-layers", "--delta-gradient", "reuse"])
    cases = step_cost.cases_from_args(args)
    assert [(c.model, c.dtype) for c in cases] == [
        ("t5-small", "float32"), ("t5-small", "bfloat16"), ("t5-base", "float32"), ("t5-base", "bfloat16")]
    assert all(c.steps == 7 and c.num_layers is None and c.delta_gradient == "reuse" for c in cases)
    assert [step_cost.delta_gradient_of(cases[0], e) for e in ESTIMATORS] == ["resample", "reuse", "reuse"]
    with pytest.raises(ValueError, match="dtype"):
        Case("tiny", 2, 8, 4, dtype="float16")
    with pytest.raises(ValueError, match="delta_gradient"):
        Case("tiny", 2, 8, 4, delta_gradient="again")
