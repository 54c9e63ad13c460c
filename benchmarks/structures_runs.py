"""Runs one benchmark run in its own workdir, or reads it back when it has finished.

Layout under the benchmark's output directory:
  search/seed{S}_budget{B}/    run_search's workdir (structure.json, gates.tsv, heatmap.png, results.json)
  retrain/{run name}/          run_retrain's workdir; random and manual runs keep their structure.json
                               here; full_test.json: the best checkpoint scored on the task's test file
  peers/{run name}/            a PEFT peer's results.json
and in each run's workdir provenance.json: the code that finished the run (git commit, whether the
checkout had uncommitted changes) and when, so that runs made over several sessions can be told apart.
A run whose results.json exists is not run again (nor is a finished search), so re-running the same
command resumes an interrupted benchmark; run_search and run_retrain also resume a run cut short
from its checkpoints.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from s3delta_jax.deltas import budget_params, candidates_from_mask, expand, save_structure, structure_from_candidates
from s3delta_jax.models.backbone import Backbone
from s3delta_jax.search.select import select_random
from s3delta_jax.train.retraining import run_retrain
from s3delta_jax.train.searching import run_search

from structures_data import full_test_data
from structures_plan import Run
from structures_scoring import frozen_params, score_retrained
from structures_stats import PEFT_ADALORA, PEFT_LORA, RANDOM, SEARCHED

RESULTS, STRUCTURE, FULL_TEST, PROVENANCE = "results.json", "structure.json", "full_test.json", "provenance.json"
REPOSITORY = Path(__file__).resolve().parents[1]
# The random structure of (seed, budget) draws from default_rng([salt, seed, budget]), its draw k > 0
# from default_rng([salt, seed, budget, k]).
RANDOM_STRUCTURE_SALT = 14


class Runner:
    """Runs and reads back the runs of one benchmark (config, output directory, backbone)."""

    def __init__(self, config: ml_collections.ConfigDict, out: str, backbone: Backbone):
        self.config, self.out, self.backbone = config, out, backbone
        self._params: dict[int, Any] = {}
        self.code = code_version(REPOSITORY)  # read once: the code this process loaded

    def run_config(self, run: Run) -> ml_collections.ConfigDict:
        """The benchmark's config with the run's seed and budget (no re-training chained to the search)."""
        config = copy.deepcopy(self.config)
        config.seed = run.seed
        if run.budget is not None:
            config.search.budget = run.budget
        config.retrain_after_search = False
        return config

    def search_dir(self, run: Run) -> str:
        return os.path.join(self.out, "search", f"seed{run.seed}_budget{run.budget:g}")

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.out, "peers" if self._is_peer(run) else "retrain", run.name)

    def is_finished(self, run: Run) -> bool:
        return os.path.isfile(os.path.join(self.run_dir(run), RESULTS)) and (
            self._is_peer(run) or os.path.isfile(os.path.join(self.run_dir(run), FULL_TEST)))

    def run(self, run: Run) -> None:
        """Runs what of `run` has not finished yet."""
        config, workdir = self.run_config(run), self.run_dir(run)
        if self._is_peer(run):
            import peft_structures  # the optional torch extra, only when a peer runs

            if not os.path.isfile(os.path.join(workdir, RESULTS)):
                peft_structures.train_peer(run.method, config, self.backbone, workdir)
        else:
            structure_path = self._structure(run, config)
            if not os.path.isfile(os.path.join(workdir, RESULTS)):
                run_retrain(config, workdir, structure_path)
            if not os.path.isfile(os.path.join(workdir, FULL_TEST)):
                self._score_full_test(config, workdir, structure_path)
        if not os.path.isfile(os.path.join(workdir, PROVENANCE)):
            _write(os.path.join(workdir, PROVENANCE), {
                **self.code, "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "host": platform.node(), "cpus": len(os.sched_getaffinity(0))})

    def record(self, run: Run) -> dict[str, Any] | None:
        """The finished run as a statistics record (structures_stats), or None if it has not finished."""
        if not self.is_finished(run):
            return None
        workdir = self.run_dir(run)
        results = _read(os.path.join(workdir, RESULTS))
        record = {"method": run.method, "seed": run.seed, "budget": run.budget, "draw": run.draw, "name": run.name,
                  "workdir": os.path.relpath(workdir, self.out), "trainable_params": results["trainable_params"],
                  "best_step": results["best_step"], "val": results["val"], "test": results["test"],
                  "wall_seconds": results["wall_seconds"]["total"], "provenance": _read_if_present(
                      os.path.join(workdir, PROVENANCE))}
        if self._is_peer(run):
            record["full_test"] = results["full_test"]
            record["peer"] = {k: results[k] for k in ("initial_trainable_params", "head_params", "within_budget",
                                                     "adalora", "target_params") if k in results}
            return record
        full_test = _read(os.path.join(workdir, FULL_TEST))
        record.update(full_test=full_test["metrics"], full_test_rows=full_test["rows"], modules=results["modules"])
        if run.method == SEARCHED:
            search = _read(os.path.join(self.search_dir(run), RESULTS))
            record["search"] = {"workdir": os.path.relpath(self.search_dir(run), self.out),
                                "best_step": search["best_step"], "val": search["val"],
                                "wall_seconds": search["wall_seconds"]["total"]}
        return record

    def search_candidates(self, run: Run) -> list[dict[str, Any]] | None:
        """The candidate rows (p, chosen, ...) of the searched run's finished search, or None."""
        search_dir = self.search_dir(run)
        if not os.path.isfile(os.path.join(search_dir, RESULTS)):
            return None
        return _read(os.path.join(search_dir, STRUCTURE))["candidates"]

    def _structure(self, run: Run, config: ml_collections.ConfigDict) -> str:
        """The path of the run's structure file, searched or written first where it is missing."""
        if run.method == SEARCHED:
            search_dir = self.search_dir(run)
            if not os.path.isfile(os.path.join(search_dir, RESULTS)):
                run_search(config, search_dir)
            return os.path.join(search_dir, STRUCTURE)
        path = os.path.join(self.run_dir(run), STRUCTURE)
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_structure(path, self._random_structure(run, config) if run.method == RANDOM
                           else self._manual_structure(run.method))
        return path

    def _random_structure(self, run: Run, config: ml_collections.ConfigDict):
        """Uniformly random candidates of the search space that fit the run's budget (select_random)."""
        candidates = expand(self.backbone.space(config.search.space), self.backbone.positions()).candidates
        budget = budget_params(config.search.budget, self.backbone.num_params)
        rng = np.random.default_rng([RANDOM_STRUCTURE_SALT, run.seed, budget] + ([run.draw] if run.draw else []))
        mask = select_random(rng, [c.size for c in candidates], budget)
        return structure_from_candidates(
            candidates_from_mask(candidates, mask), backbone=self.backbone.name,
            backbone_params=self.backbone.num_params, budget=config.search.budget, budget_params=budget,
            search_space=config.search.space, all_candidates=candidates)

    def _manual_structure(self, name: str):
        """Every candidate of the backbone's manual baseline `name` (its natural size, no budget)."""
        candidates = expand(self.backbone.baseline(name), self.backbone.positions()).candidates
        return structure_from_candidates(candidates, backbone=self.backbone.name,
                                         backbone_params=self.backbone.num_params, search_space=f"baseline:{name}")

    def _score_full_test(self, config: ml_collections.ConfigDict, workdir: str, structure_path: str) -> None:
        started = time.monotonic()
        split = full_test_data(config, self.backbone)
        if split is None:
            scores = {"metrics": None, "rows": 0, "skipped": "the task's test file has unlabelled rows"}
        else:
            params = self._frozen_params(config.seed)
            metrics = score_retrained(config, self.backbone, workdir, structure_path, split, params)
            scores = {"metrics": metrics, "rows": len(split.examples)}
        _write(os.path.join(workdir, FULL_TEST), {**scores, "seconds": time.monotonic() - started})

    def _frozen_params(self, seed: int):
        """The frozen weights (one copy for a checkpoint; per seed for random weights)."""
        key = -1 if self.backbone.checkpoint_dir is not None else seed
        if key not in self._params:
            self._params[key] = frozen_params(self.backbone, seed)
        return self._params[key]

    @staticmethod
    def _is_peer(run: Run) -> bool:
        return run.method in (PEFT_LORA, PEFT_ADALORA)


def code_version(repository: Path) -> dict[str, Any]:
    """{"commit": HEAD's sha, "uncommitted_changes": whether tracked files differ from it} of the git
    checkout at `repository`; both None where it is not one (or git is missing)."""
    try:
        commit = _git(repository, "rev-parse", "HEAD")
        changes = _git(repository, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit, "uncommitted_changes": bool(changes)}


def _git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repository), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _read_if_present(path: str) -> dict[str, Any] | None:
    return _read(path) if os.path.isfile(path) else None


def _read(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _write(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
