"""The training-loop skeleton shared by the search and the re-training phase.

Each step: take the batches, run the jitted step, log; every `eval_every` steps (and at the end)
evaluate on the validation split and keep the best (>=, as in the reference) state; checkpoint the
full state and the data position so that re-running the same command resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import numpy as np

from s3delta_jax.data import TrainBatches
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.outputs import MetricsLog
from s3delta_jax.train.progress import Progress


@dataclasses.dataclass
class Phase:
    """One loop: what to run, how often to evaluate and checkpoint, and how to evaluate.

    Attributes:
      name: "search" or "retrain" (progress and log labels).
      total_steps: steps of the whole phase (epochs x batches per epoch, or a cut).
      eval_every / checkpoint_every: in steps; checkpoint_every <= 0 means at every evaluation.
      step_fn: `(state, *batches) -> (state, metrics dict of scalars)`, jitted.
      loaders: the endless batch iterators; one batch of each is passed to `step_fn`.
      evaluate: `state -> {metric: value}` on the validation split (primary metric first).
      best_payload: `state -> pytree` kept as the best checkpoint.
    """

    name: str
    total_steps: int
    eval_every: int
    checkpoint_every: int
    step_fn: Callable[..., tuple[Any, dict]]
    loaders: list[TrainBatches]
    evaluate: Callable[[Any], dict[str, float]]
    best_payload: Callable[[Any], Any]


@dataclasses.dataclass
class PhaseResult:
    """The final state, the best validation score/step/metrics, the step the run resumed from (0: a
    fresh start) and the seconds this run took."""

    state: Any
    best_score: float
    best_step: int
    best_metrics: dict[str, float]
    start_step: int
    seconds: float


def phase_steps(num_examples: int, phase_config: Any) -> tuple[int, int]:
    """(steps to run, schedule length): epochs x ceil(examples / batch) (the reference's max_step),
    the first cut to `max_steps` when > 0; the learning rate decays over the uncut length."""
    steps = phase_config.epochs * math.ceil(num_examples / phase_config.batch_size)
    return (min(steps, phase_config.max_steps) if phase_config.max_steps > 0 else steps), steps


def run_phase(phase: Phase, state: Any, checkpoints: RunCheckpoints, metrics_path: str,
              writer: bool) -> PhaseResult:
    """Runs `phase` from `state`, or from the latest checkpoint in `checkpoints` when there is one.

    Every process runs it; only the `writer` logs metrics and shows progress. A checkpoint is restored
    onto the shardings of `state`, so a run may resume on a different mesh.
    """
    started = time.monotonic()
    best = {"score": -math.inf, "step": -1, "metrics": {}}
    start_step = 0
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore_latest(state)
        start_step = int(meta["step"])
        checkpoints.discard_best_after(start_step)
        best = meta["best"]
        best["score"] = float(best["score"]) if best["score"] is not None else -math.inf
        for loader, loader_state in zip(phase.loaders, meta["loaders"]):
            loader.epoch, loader.position = loader_state["epoch"], loader_state["position"]
    log = MetricsLog(metrics_path, start_step if start_step else None) if writer else None
    progress = Progress(phase.name, phase.total_steps, start=start_step,
                        log_every=max(phase.total_steps // 20, 1)) if writer else None
    checkpoint_every = phase.checkpoint_every if phase.checkpoint_every > 0 else phase.eval_every

    def emit(step: int, metrics: dict, scores: dict[str, float]) -> None:
        """Logs one step: its metrics (fetched from the device here) and validation scores."""
        if writer:
            record = {"phase": phase.name, "step": step,
                      **{k: float(v) for k, v in jax.device_get(metrics).items()},
                      **{f"val_{k}": v for k, v in scores.items()}}
            log.write(record)
            progress.update(step, **{k: v for k, v in record.items() if k.startswith(("loss", "val_"))})

    # A step's metrics are fetched after the next step is dispatched, so the device is not left idle
    # while the host logs and prepares batches; logging catches up before every checkpoint.
    pending = None
    for step in range(start_step + 1, phase.total_steps + 1):
        batches = [next(loader) for loader in phase.loaders]
        state, metrics = phase.step_fn(state, *batches)
        if pending is not None:
            emit(*pending)
        pending = (step, metrics, {})
        last = step == phase.total_steps
        if step % phase.eval_every == 0 or last:
            scores = phase.evaluate(state)
            pending[2].update(scores)
            score = next(iter(scores.values()))
            if score >= best["score"]:
                best = {"score": score, "step": step, "metrics": scores}
                checkpoints.save_best(step, phase.best_payload(state), {"step": step, "metrics": scores})
        if step % checkpoint_every == 0 or last:
            emit(*pending)
            pending = None
            meta = {"step": step, "best": _json_best(best), "loaders": [l.state() for l in phase.loaders]}
            checkpoints.save_latest(step, state, meta)
    return PhaseResult(state, best["score"], best["step"], best["metrics"], start_step, time.monotonic() - started)


def _json_best(best: dict) -> dict:
    score = best["score"]
    return {**best, "score": None if not np.isfinite(score) else float(score)}
