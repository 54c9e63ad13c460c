"""benchmarks/step_cost.py on its tiniest case: the measurement's JSON schema, ratios that are positive,
finite and computed from the raw numbers, the compile-only mode, the paper-cpu preset's setting and
the authors' peer's subprocess (against a stand-in for ../shared/tools/authors_step.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import textwrap
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import authors_peer
import peft_peer
import step_cost
from step_cost_setup import PAPER_BUDGET, Case, build

from s3delta_jax.deltas import Rule

ESTIMATORS = ("first_order", "second_order_fd", "second_order_exact")
# One block per stack, three candidates (64 + 128 + 64 parameters), no dropout: every step compiles
# in seconds (compile time grows with the candidates in each pass of a step).
SPACE = ((Rule("decoder/final_layer_norm", "norm", "lnfit"), Rule("encoder/final_layer_norm", "norm", "bitfit"),
          Rule("decoder/block_0/layer_0/SelfAttention/q", "linear", "lora", {"r": 1})),)
TINIEST = Case("tiny", batch_size=2, source_length=8, target_length=4, steps=2, warmup=1, budget=100,
               num_layers=1, dropout_rate=0.0, space=SPACE)
COMPILE_KEYS = {"compile_seconds", "trace_and_lower_seconds", "xla_compile_seconds", "compiled_memory",
                "passes_per_step"}
TIMING_KEYS = {"median_step_seconds", "step_seconds", "device_peak_bytes", "device_peak_exact", "metrics_finite"}
COMPILED_RATIO_KEYS = {"search_over_retrain_compile_time", "search_over_retrain_compiled_memory",
                       "search_over_retrain_temp_memory"}
TIMED_RATIO_KEYS = {"search_over_retrain_time", "search_over_retrain_memory", "zeta_share_of_step"}


def positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def result():
    return step_cost.measure_case(TINIEST)


@pytest.fixture(scope="module")
def compiled():
    return step_cost.measure_case(dataclasses.replace(TINIEST, estimators=("first_order",)), compile_only=True)


def test_result_is_strict_json(result, compiled):
    for measured in (result, compiled):
        assert json.loads(json.dumps(measured, allow_nan=False)) == json.loads(json.dumps(measured))


def test_every_step_has_its_measurements(result):
    retrain = result["retrain"]
    assert COMPILE_KEYS | TIMING_KEYS | {"modules", "trainable_params"} <= retrain.keys()
    assert list(result["search"]) == list(ESTIMATORS)
    for measured in [retrain, *result["search"].values()]:
        assert len(measured["step_seconds"]) == TINIEST.steps
        assert min(measured["step_seconds"]) <= measured["median_step_seconds"] <= max(measured["step_seconds"])
        assert positive_finite(measured["median_step_seconds"]) and positive_finite(measured["compile_seconds"])
        assert measured["compile_seconds"] == pytest.approx(
            measured["trace_and_lower_seconds"] + measured["xla_compile_seconds"])
        assert measured["metrics_finite"] is True
        memory = measured["compiled_memory"]
        assert memory["total"] == memory["argument"] + memory["output"] + memory["temp"] - memory["alias"] > 0


def test_ratios_are_positive_finite_and_computed_from_the_medians(result):
    retrain = result["retrain"]
    for estimator, measured in result["search"].items():
        assert COMPILED_RATIO_KEYS | TIMED_RATIO_KEYS | COMPILE_KEYS | {"memory_basis"} <= measured.keys(), estimator
        for key in COMPILED_RATIO_KEYS | TIMED_RATIO_KEYS:
            assert positive_finite(measured[key]), (estimator, key, measured[key])
        assert measured["search_over_retrain_time"] == pytest.approx(
            measured["median_step_seconds"] / retrain["median_step_seconds"])
        assert measured["search_over_retrain_compile_time"] == pytest.approx(
            measured["compile_seconds"] / retrain["compile_seconds"])
        assert measured["zeta_share_of_step"] == pytest.approx(
            2 * result["zeta"]["seconds_per_solve"] / measured["median_step_seconds"])
        if retrain["device_peak_bytes"] is None:  # CPU: the compiled footprint stands in
            assert measured["memory_basis"] == "xla_compiled"
            assert measured["search_over_retrain_memory"] == pytest.approx(
                measured["compiled_memory"]["total"] / retrain["compiled_memory"]["total"])
        # Every candidate is in the search step's state, so its executable needs more memory.
        assert measured["search_over_retrain_compiled_memory"] > 1.0


def test_full_depth_retraining_is_the_first_positions_smallest_candidate_and_its_ratio(result):
    """The encoder runs first, so of SPACE's candidates the encoder's final norm is the first reached."""
    full_depth = result["retrain_full_depth"]
    assert full_depth["candidate"] == "encoder/final_layer_norm:bitfit" and full_depth["trainable_params"] == 64
    assert positive_finite(full_depth["median_step_seconds"])
    for estimator, measured in result["search"].items():
        assert measured["search_over_full_depth_retrain_time"] == pytest.approx(
            measured["median_step_seconds"] / full_depth["median_step_seconds"]), estimator
    assert "full depth: encoder/final_layer_norm:bitfit" in step_cost.format_case(result)


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
    # PEFT's LoRA and the backbone's lora_qv_r8 baseline: counted by two frameworks independently.
    assert peer["same_trainable_params"] is True
    assert peer["peft"]["trainable_params"] == 2 * 2 * 8 * (64 + 64)  # 2 stacks x (q, v) x r (in + out)
    assert positive_finite(peer["ours_over_peft_time"])
    assert peer["ours_over_peft_time"] == pytest.approx(
        peer["ours_lora_qv_r8"]["median_step_seconds"] / peer["peft"]["median_step_seconds"])


def test_table_names_every_step_and_the_skipped_authors_peer(result):
    table = step_cost.format_case(result)
    assert all(f"search {e}" in table for e in ESTIMATORS) and "re-train" in table
    assert result["authors_peer"] == {"skipped": authors_peer.SETUP_HINT}
    assert f"authors' peer skipped: {authors_peer.SETUP_HINT}" in table


def test_compile_only_compiles_every_step_and_times_none(compiled):
    assert compiled["compile_only"] is True
    assert list(compiled["search"]) == ["first_order"]
    retrain, search = compiled["retrain"], compiled["search"]["first_order"]
    for measured in (retrain, search):
        assert COMPILE_KEYS <= measured.keys() and not TIMING_KEYS & measured.keys()
        assert positive_finite(measured["compile_seconds"]) and measured["compiled_memory"]["total"] > 0
    assert COMPILED_RATIO_KEYS <= search.keys() and not TIMED_RATIO_KEYS & search.keys()
    assert search["search_over_retrain_compiled_memory"] == pytest.approx(
        search["compiled_memory"]["total"] / retrain["compiled_memory"]["total"])
    assert not {"zeta", "profile", "peer", "authors_peer"} & compiled.keys()
    assert "n/a" in step_cost.format_case(compiled).splitlines()[3]  # no median time


def test_paper_cpu_preset_is_the_papers_search_setting():
    (case,) = step_cost.PRESETS["paper-cpu"]
    assert (case.model, case.batch_size, case.source_length, case.target_length, case.dtype) == (
        "t5-small", 8, 128, 3, "float32")
    assert (case.num_layers, case.dropout_rate, case.space, case.budget) == (None, 0.1, "s3pet_mix", 1.389e-4)
    assert case.searches == ["first_order", "second_order_fd+reuse", "second_order_fd"]
    setup = build(case, abstract_params=True)
    assert len(setup.candidates) == 232  # S3PET-M on all 6 + 6 blocks
    assert setup.budget == math.floor(PAPER_BUDGET * setup.backbone.num_params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(setup.params))
    assert 0 < sum(c.size for c in setup.structure) <= setup.budget
    assert authors_peer.unsupported(case) is None


def test_flags_override_the_preset():
    args = step_cost.parse_args(["--preset", "cpu-quick", "--model", "t5-small,t5-base", "--dtype",
                                 "float32,bfloat16", "--steps", "7", "--all-layers", "--estimators",
                                 "second_order_fd+reuse,first_order", "--compile-only"])
    cases = step_cost.cases_from_args(args)
    assert args.compile_only and args.authors_peer is None
    assert [(c.model, c.dtype) for c in cases] == [
        ("t5-small", "float32"), ("t5-small", "bfloat16"), ("t5-base", "float32"), ("t5-base", "bfloat16")]
    assert all(c.steps == 7 and c.num_layers is None for c in cases)
    assert cases[0].searches == ["first_order", "second_order_fd+reuse"]  # measured smallest memory first
    scanned = step_cost.cases_from_args(step_cost.parse_args(["--scan-layers", "--remat", "full"]))
    assert all(c.scan_layers and c.remat == "full" for c in scanned)
    assert not any(c.scan_layers or c.remat != "none" for c in cases)
    with pytest.raises(ValueError, match="remat 'some': use one of none, full, dots"):
        Case("tiny", 2, 8, 4, remat="some")
    with pytest.raises(ValueError, match="dtype"):
        Case("tiny", 2, 8, 4, dtype="float16")
    with pytest.raises(ValueError, match="estimators"):
        Case("tiny", 2, 8, 4, estimators=("first_order+reuse",))


def test_a_scanned_case_searches_on_stacked_params_and_re_trains_unrolled():
    case = dataclasses.replace(TINIEST, num_layers=3, budget=300, scan_layers=True, remat="full",
                               estimators=("first_order",),
                               space=((Rule(r"block_\d+/layer_0/SelfAttention/q", "linear", "lora", {"r": 1}),),))
    setup = build(case)
    assert [(scan.parent, scan.count) for scan in setup.scans] == [(("encoder",), 3), (("decoder",), 3)]
    kernel = setup.search_params["decoder"]["block_scan"]["layer_0"]["SelfAttention"]["q"]["kernel"]
    assert kernel.shape[0] == 3 and "block_1" in setup.params["decoder"]
    assert "block_1" not in setup.search_params["decoder"]
    measured = step_cost.measure_case(case, compile_only=True)
    assert "search scanned, search remat full" in measured["label"] and measured["case"]["scan_layers"]
    assert measured["search"]["first_order"]["compile_seconds"] > 0


# A stand-in for ../shared/tools/authors_step.py: its command line and JSON, fixed step times.
FAKE_AUTHORS_STEP = textwrap.dedent("""
    import argparse, json, os
    p = argparse.ArgumentParser()
    for flag in ("mode", "model", "batch-size", "source-length", "target-length", "dropout", "budget", "steps",
                 "warmup", "threads", "json"):
        p.add_argument("--" + flag)
    opts = p.parse_args()
    assert os.path.isdir(os.environ["S3DELTA_REPO"])
    seconds = {"retrain_budget": 0.5, "first_order": 1.5, "second_order": 4.0}
    results = [{"mode": m, "median_step_seconds": seconds[m], "torch_threads": int(opts.threads),
                "steps": int(opts.steps)} for m in opts.mode.split(",")]
    with open(opts.json, "w") as f:
        json.dump({"torch": "t", "transformers": "4.21.3", "python": "3", "affinity": [0],
                   "load_average": [0.0, 0.0, 0.0], "results": results}, f)
""")


def test_authors_peer_runs_the_tool_and_divides_the_medians(tmp_path):
    tool = tmp_path / "authors_step.py"
    tool.write_text(FAKE_AUTHORS_STEP)
    (case,) = step_cost.PRESETS["paper-cpu"]
    argv = authors_peer.command(case, sys.executable, "out.json", tool)
    assert argv[argv.index("--mode") + 1] == "retrain_budget,first_order,second_order"
    assert argv[argv.index("--budget") + 1] == "0.0001389" and argv[argv.index("--source-length") + 1] == "128"
    authors = authors_peer.measure_authors(case, str(tmp_path), sys.executable, tool)
    assert set(authors["steps"]) == {"retrain", "first_order", "second_order_fd"}
    ours = {"retrain": 0.25, "first_order": 0.6, "second_order_fd": 1.0, "second_order_fd+reuse": 0.8}
    ratios = authors_peer.compare(authors, ours)
    assert ratios["ours_over_authors_time"] == pytest.approx({"retrain": 0.5, "first_order": 0.4,
                                                              "second_order_fd": 0.25})
    assert ratios["authors_search_over_retrain_time"] == pytest.approx({"first_order": 3.0, "second_order_fd": 8.0})


def test_authors_peer_says_why_it_did_not_run(tmp_path):
    tool = tmp_path / "authors_step.py"
    tool.write_text("raise SystemExit(3)")
    (case,) = step_cost.PRESETS["paper-cpu"]
    assert "status 3" in authors_peer.measure_authors(case, str(tmp_path), sys.executable, tool)["failed"]
    assert "no Python" in authors_peer.measure_authors(case, str(tmp_path), str(tmp_path / "none"), tool)["skipped"]
    assert "tiny" in authors_peer.unsupported(TINIEST)
