"""Searched structures against random, manual and PEFT structures, over seeds and budgets (paper Table 2, Figure 2).

    python benchmarks/structures.py --config configs/mrpc.py:minilm --budgets 1e-4 2e-4 4e-4 \
        --seeds 0 1 2 3 4 --out runs/structures --config.data.path=/path/to/MRPC

For one task config (any backbone; `--config.FIELD=VALUE` overrides as in run_search.py), per seed
and budget: the search (run_search) and its selected structure, --random-draws random structures of
the same budget (select_random, seeded by seed, budget and draw; default one; their mean is the
seed's random score), PEFT AdaLoRA at that budget; per seed: every manual structure of the backbone
(BitFit, LNFit, LoRA r=1 on query/value, Adapter-LR and the linear probe, no module, for BERT) and
PEFT LoRA r=1 on query/value. Every structure is re-trained with the config's one re-training
schedule (run_retrain) in its own workdir under --out, so an interrupted benchmark resumes
(structures_runs.py); test metrics are those at the best validation evaluation, on the paper's test
half and on the task's own test file (MRPC: 1,725 labelled rows). The peers (peft_structures.py)
need the optional extra `evidence`; without it they are skipped with a message.

Writes into --out: structures.json (every run, the tables, the parity check, how alike the searches
of different seeds came out), structures.md (the markdown tables, also printed), structures.png
(metric against trainable parameters) and heatmaps.png (the searched structures' gate probabilities).
With --shard I/N this process runs only its share of the runs and writes no report: run the same
command with --report-only once every shard has finished.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # config files import `configs.base`
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the PEFT peers share a GPU with JAX

import jax  # noqa: E402
import ml_collections  # noqa: E402

from s3delta_jax import data as data_lib  # noqa: E402
from s3delta_jax.deltas import budget_params  # noqa: E402
from s3delta_jax.models.backbone import Backbone  # noqa: E402
from s3delta_jax.models.registry import load_backbone  # noqa: E402
from s3delta_jax.train.config_file import apply_overrides, load_config, split_overrides  # noqa: E402

import structures_plot  # noqa: E402
import structures_report  # noqa: E402
import structures_stats  # noqa: E402
from structures_plan import Run, make_plan, parse_shard, shard  # noqa: E402
from structures_runs import Runner  # noqa: E402

PEER_PACKAGES = ("torch", "transformers", "peft")
REPORT_JSON, REPORT_MD, METRIC_PLOT, HEATMAP_PLOT = "structures.json", "structures.md", "structures.png", "heatmaps.png"


def parse_budget(text: str) -> float | int:
    """A budget as the configs take it: a ratio < 1, or a whole parameter count."""
    value = float(text)
    return int(value) if value >= 1 else value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config file, FILE[:VARIANT], e.g. configs/mrpc.py:minilm")
    parser.add_argument("--budgets", type=parse_budget, nargs="*", default=[],
                        help="search budgets: ratios of the backbone (< 1) or parameter counts (none: only the "
                             "budget-free runs, e.g. the LoRA parity check with --manual lora_qv_r1)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--out", required=True, help="the benchmark's directory (every run's workdir, the report)")
    parser.add_argument("--random-draws", type=positive_int, default=1,
                        help="random structures per seed and budget (their mean is paired with the searched one)")
    parser.add_argument("--manual", nargs="*", help="manual structures to re-train (default: all the backbone's baselines)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="the PEFT LoRA and AdaLoRA peers (default: on where torch, transformers and peft import)")
    parser.add_argument("--shard", help="I/N: run only every N-th run from the I-th, and write no report")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    return parser.parse_args(argv)


def peers_unavailable(backbone: Backbone) -> str | None:
    """Why the PEFT peers cannot run here, or None."""
    missing = [name for name in PEER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed: pip install -e '.[evidence]' to run the PEFT peers"
    if backbone.family != "bert":
        return f"the PEFT peers are BERT-family encoders; this backbone is {backbone.family}"
    return None


def execute(runner: Runner, runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """Runs the unfinished runs in order: (names run now, names already finished)."""
    executed, skipped = [], []
    for i, run in enumerate(runs, 1):
        if runner.is_finished(run):
            skipped.append(run.name)
            print(f"[{i}/{len(runs)}] {run.name}: finished before, skipped", file=sys.stderr, flush=True)
            continue
        started = time.monotonic()
        print(f"[{i}/{len(runs)}] {run.name} ...", file=sys.stderr, flush=True)
        runner.run(run)
        executed.append(run.name)
        print(f"[{i}/{len(runs)}] {run.name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return executed, skipped


def build_report(config: ml_collections.ConfigDict, runner: Runner, runs: Sequence[Run], settings: dict) -> dict:
    """Every finished run as a record, the per-method summary, searched-minus-others differences, parity
    and how alike the searches of different seeds came out."""
    task = data_lib.get_task(config.data.task, config.data.fix_reference_bugs)
    metrics = list(task.metric_names)
    finished = [(run, runner.record(run)) for run in runs]
    records = [record for _, record in finished if record is not None]
    backbone = runner.backbone
    return {
        "benchmark": "structures",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()], "load_average_1_5_15_min": list(os.getloadavg())},
        "config": config.to_dict(),
        "settings": settings,
        "backbone": backbone.fingerprint(),
        "budget_params": {f"{b:g}": budget_params(b, backbone.num_params) for b in settings["budgets"]},
        "metrics": metrics,
        "full_test_rows": max((r.get("full_test_rows", 0) for r in records), default=0),
        "runs": records,
        "summary": structures_stats.summarize(records, metrics),
        "differences": structures_stats.differences(records, metrics),
        "parity": structures_stats.parity(records, metrics[0]),
        "search_agreement": search_agreement(runner, runs, settings["budgets"]),
        "code_versions": code_versions(records),
        "missing": [run.name for run, record in finished if record is None],
    }


def code_versions(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """How many finished runs each version of the code finished: [{"commit", "uncommitted_changes",
    "runs"}], most runs first; commit None: not recorded (a run finished before provenance.json, or
    outside a git checkout)."""
    counts: dict[tuple, int] = {}
    for record in records:
        provenance = record["provenance"] or {}
        key = (provenance.get("commit"), provenance.get("uncommitted_changes"))
        counts[key] = counts.get(key, 0) + 1
    return [{"commit": commit, "uncommitted_changes": changes, "runs": n}
            for (commit, changes), n in sorted(counts.items(), key=lambda item: -item[1])]


def search_agreement(runner: Runner, runs: Sequence[Run], budgets: Sequence[float | int]) -> dict[str, Any]:
    """{budget: structures_stats.search_agreement of the budget's finished searches}."""
    agreement = {}
    for budget in budgets:
        searches = {run.seed: runner.search_candidates(run) for run in runs
                    if run.method == structures_stats.SEARCHED and run.budget == budget}
        agreement[f"{budget:g}"] = structures_stats.search_agreement(
            {seed: rows for seed, rows in searches.items() if rows is not None})
    return agreement


def write_outputs(report: dict[str, Any], runner: Runner, runs: Sequence[Run], out: str) -> str:
    """structures.json, structures.md and the two figures; returns the markdown."""
    searches = {(run.seed, run.budget): os.path.join(runner.search_dir(run), "heatmap.png")
                for run in runs if run.method == structures_stats.SEARCHED}
    metric = report["metrics"][0]
    plots = {"metric_vs_params": os.path.join(out, METRIC_PLOT), "heatmaps": os.path.join(out, HEATMAP_PLOT)}
    title = f"{report['config']['data']['task']} on {report['backbone']['name']}: {metric} against trainable parameters"
    if report["summary"]:
        structures_plot.plot_metric_vs_params(report["summary"], metric, plots["metric_vs_params"], title)
    report["plots"] = {"metric_vs_params": METRIC_PLOT if report["summary"] else None,
                       "heatmaps": HEATMAP_PLOT if structures_plot.tile_heatmaps(searches, plots["heatmaps"]) else None}
    text = structures_report.markdown(report)
    with open(os.path.join(out, REPORT_JSON), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, REPORT_MD), "w") as f:
        f.write(text + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark (or this process's shard of it) and returns the report, or, with --shard,
    {"executed", "skipped"}."""
    started = time.monotonic()
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(rest)
    config = load_config(args.config)
    apply_overrides(config, overrides, args.config)
    backbone = load_backbone(config.model)
    manual = list(backbone.baselines) if args.manual is None else args.manual
    unavailable = peers_unavailable(backbone) if args.peers else "--no-peers"
    if args.peers and unavailable:
        print(f"skipping the PEFT peers: {unavailable}", file=sys.stderr)
    runs = make_plan(args.seeds, args.budgets, manual, peers=unavailable is None, random_draws=args.random_draws)
    os.makedirs(args.out, exist_ok=True)
    runner = Runner(config, args.out, backbone)
    mine = shard(runs, *parse_shard(args.shard)) if args.shard else runs
    executed, skipped = ([], []) if args.report_only else execute(runner, mine)
    if args.shard:
        return {"executed": executed, "skipped": skipped}
    settings = {"config": args.config, "overrides": [str(o) for o in overrides], "seeds": args.seeds,
                "budgets": args.budgets, "random_draws": args.random_draws, "manual": manual,
                "peers": unavailable is None, "peers_skipped": unavailable}
    report = build_report(config, runner, runs, settings)
    report.update(command=" ".join(["python", "benchmarks/structures.py", *rest, *map(str, overrides)]),
                  executed=executed, skipped=skipped, wall_seconds=time.monotonic() - started)
    print(write_outputs(report, runner, runs, args.out))
    return report


if __name__ == "__main__":
    main()
