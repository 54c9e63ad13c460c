"""Statistics of the structures benchmark: means over seeds and paired differences with a t interval.

A record is one finished run: {"method", "seed", "budget" (None for structures without one),
"trainable_params", "val", "test", "full_test" (metric dicts in percent; full_test may be None)}.
A method with several runs on one seed (random structures, `--random-draws`) counts as their mean on
that seed: its mean +- std over seeds and its paired differences use the per-seed means.

The difference of two methods is taken per seed (both ran on that seed's split), d_s = a_s - b_s over
the n seeds both have, and summarised as mean(d) +- t_{0.975, n-1} std(d) / sqrt(n) (std with
ddof 1): the 95% confidence interval of the mean paired difference under the t distribution
(scipy.stats.t). With one seed there is no interval (None).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

SEARCHED, RANDOM = "searched", "random"
PEFT_LORA, PEFT_ADALORA = "peft_lora_qv_r1", "peft_adalora"
OURS_LORA = "lora_qv_r1"  # the manual structure the PEFT LoRA peer must match
PARITY_TOLERANCE = 1.5  # points of the primary metric, mean over seeds
SPLITS = ("test", "full_test")
CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (ddof 1; None for one value), "n"} of `values`."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "n": int(len(values))}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """a - b per seed (the seeds both have) with the t confidence interval of its mean (module docstring)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two methods share no seed: nothing to pair")
    diffs = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    n, mean = len(diffs), float(diffs.mean())
    result = {"seeds": seeds, "per_seed": diffs.tolist(), "mean": mean, "n": n, "confidence": confidence,
              "std": None, "t_critical": None, "ci_low": None, "ci_high": None}
    if n > 1:
        std = float(diffs.std(ddof=1))
        t_critical = float(stats.t.ppf((1 + confidence) / 2, df=n - 1))
        half = t_critical * std / math.sqrt(n)
        result.update(std=std, t_critical=t_critical, ci_low=mean - half, ci_high=mean + half)
    return result


def group(records: Iterable[dict], method: str, budget: float | int | None) -> list[dict]:
    """The records of `method` at `budget` (None: structures without a budget), by seed."""
    return sorted((r for r in records if r["method"] == method and r["budget"] == budget), key=lambda r: r["seed"])


def by_seed(records: Iterable[dict], split: str, metric: str) -> dict[int, float]:
    """{seed: the metric on the split, averaged over the seed's records} of the records that have
    that split scored."""
    values: dict[int, list[float]] = {}
    for record in records:
        if record.get(split):
            values.setdefault(record["seed"], []).append(record[split][metric])
    return {seed: float(np.mean(v)) for seed, v in values.items()}


def summarize(records: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """One row per (method, budget), in the order they first appear: seeds, runs, trainable parameters
    (mean_std over runs) and every split's metrics as mean_std over seeds of the per-seed means."""
    rows = []
    for method, budget in dict.fromkeys((r["method"], r["budget"]) for r in records):
        runs = group(records, method, budget)
        row = {"method": method, "budget": budget, "seeds": sorted({r["seed"] for r in runs}), "runs": len(runs),
               "trainable_params": mean_std([r["trainable_params"] for r in runs])}
        for split in ("val", *SPLITS):
            scored = any(r.get(split) for r in runs)
            row[split] = {m: mean_std(list(by_seed(runs, split, m).values())) for m in metrics} if scored else None
        rows.append(row)
    return rows


def differences(records: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """Searched minus each other method, per budget: the random structure and AdaLoRA of the same
    budget, and every structure without a budget (manual ones, the LoRA peer), paired over seeds; on
    the test splits and on validation (the split that choices of the search's settings may look at)."""
    rows = []
    budgets = list(dict.fromkeys(r["budget"] for r in records if r["method"] == SEARCHED))
    for budget in budgets:
        searched = group(records, SEARCHED, budget)
        others = [(m, b) for m, b in dict.fromkeys((r["method"], r["budget"]) for r in records)
                  if m != SEARCHED and b in (budget, None)]
        for method, other_budget in others:
            other = group(records, method, other_budget)
            row = {"budget": budget, "versus": method, "versus_budget": other_budget}
            for split in ("val", *SPLITS):
                row[split] = {m: paired_difference(by_seed(searched, split, m), by_seed(other, split, m))
                              for m in metrics} if _share_a_seed(searched, other, split) else None
            rows.append(row)
    return rows


def parity(records: Sequence[dict], metric: str, tolerance: float = PARITY_TOLERANCE) -> dict | None:
    """Our LoRA r=1 q,v re-training against PEFT's on the same seeds: the mean test metric of each and
    whether they agree within `tolerance` points. None when either is missing."""
    ours, theirs = by_seed(group(records, OURS_LORA, None), "test", metric), \
        by_seed(group(records, PEFT_LORA, None), "test", metric)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    ours_mean = float(np.mean([ours[s] for s in seeds]))
    theirs_mean = float(np.mean([theirs[s] for s in seeds]))
    return {"metric": metric, "seeds": seeds, "ours": [ours[s] for s in seeds], "peft": [theirs[s] for s in seeds],
            "ours_mean": ours_mean, "peft_mean": theirs_mean, "difference": ours_mean - theirs_mean,
            "tolerance": tolerance, "within_tolerance": abs(ours_mean - theirs_mean) <= tolerance}


def search_agreement(searches: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, Any] | None:
    """How alike the searches of one budget came out on different seeds, from their structure files'
    candidate rows ({seed: [{"p", "chosen"}, ...]}, the same candidates in the same order): per pair
    of seeds the Spearman correlation of p over the candidates (the alpha ranking: p is monotone in
    alpha within a search) and the Jaccard overlap |A & B| / |A | B| of the chosen candidates.
    None with fewer than two seeds."""
    seeds = sorted(searches)
    if len(seeds) < 2:
        return None
    p = {seed: [row["p"] for row in searches[seed]] for seed in seeds}
    chosen = {seed: {i for i, row in enumerate(searches[seed]) if row["chosen"]} for seed in seeds}
    pairs = list(itertools.combinations(seeds, 2))
    spearman = [float(stats.spearmanr(p[a], p[b]).statistic) for a, b in pairs]
    jaccard = [len(chosen[a] & chosen[b]) / len(chosen[a] | chosen[b]) for a, b in pairs]
    return {"pairs": pairs, "spearman": spearman, "jaccard": jaccard,
            "spearman_mean": float(np.mean(spearman)), "jaccard_mean": float(np.mean(jaccard))}


def _share_a_seed(a: Sequence[dict], b: Sequence[dict], split: str) -> bool:
    return bool({r["seed"] for r in a if r.get(split)} & {r["seed"] for r in b if r.get(split)})
