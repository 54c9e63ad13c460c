"""The training-loop skeleton shared by the search and the re-training phase.

Each step: take the batches, run the jitted step, log; every `eval_every` steps (and at the end)
evaluate on the validation split and keep the best (>=, as in the reference) state; checkpoint the
full state and the data position so that re-running the same command resumes exactly. A run resumes
from the newest readable checkpoint (checkpoints.RunCheckpoints.resume), the best one included.

SIGINT (Ctrl-C) and SIGTERM (e.g. a preemptible TPU VM) stop the loop between two steps: the state
after the last completed step is checkpointed with its loader positions and best-so-far, one line
says so, and the process exits with 130 / 143 (RunInterrupted). A second signal of the same kind
acts as it would without the loop (KeyboardInterrupt, termination). The processes of a multi-process
run stop together at the next evaluation or checkpoint step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from s3delta_jax.data import TrainBatches, next_aligned_batches
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.outputs import MetricsLog
from s3delta_jax.train.progress import Progress

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass
class Phase:
    """One loop: what to run, how often to evaluate and checkpoint, and how to evaluate.

    Attributes:
      name: "search" or "retrain" (progress and log labels).
      total_steps: steps of the whole phase (epochs x batches per epoch, or a cut).
      eval_every / checkpoint_every: in steps; checkpoint_every <= 0 means at every evaluation.
      step_fn: `(state, *batches) -> (state, metrics dict of scalars)`, jitted.
      loaders: the endless batch iterators; one batch of each is passed to `step_fn`, all padded to
        the same lengths (`data.next_aligned_batches`).
      evaluate: `state -> {metric: value}` on the validation split (primary metric first).
      best_payload: `state -> pytree` kept as the best checkpoint.
      to_checkpoint / from_checkpoint: the state as checkpoints hold it, and back (a scanned
        search's state is stacked in the loop, unscanned on disk); identity by default.
    """

    name: str
    total_steps: int
    eval_every: int
    checkpoint_every: int
    step_fn: Callable[..., tuple[Any, dict]]
    loaders: list[TrainBatches]
    evaluate: Callable[[Any], dict[str, float]]
    best_payload: Callable[[Any], Any]
    to_checkpoint: Callable[[Any], Any] = lambda state: state
    from_checkpoint: Callable[[Any], Any] = lambda state: state


@dataclasses.dataclass
class PhaseResult:
    """The final state, the best validation score/step/metrics, the step the run resumed from (0: a
    fresh start), the seconds this run took; the phase's name and length, and the checkpoint it
    resumed from (None: a fresh start), for the final summary."""

    state: Any
    best_score: float
    best_step: int
    best_metrics: dict[str, float]
    start_step: int
    seconds: float
    phase: str = ""
    total_steps: int = 0
    resumed_from: str | None = None

    @property
    def primary_metric(self) -> str:
        """The name of the metric `best_score` is (the first of `best_metrics`)."""
        return next(iter(self.best_metrics), "")


class RunInterrupted(SystemExit):
    """The loop stopped on a signal after checkpointing `step`; exits with 128 + the signal number."""

    def __init__(self, step: int, signum: int):
        super().__init__(128 + signum)
        self.step, self.signum = step, signum


def phase_steps(num_examples: int, phase_config: Any) -> tuple[int, int]:
    """(steps to run, schedule length): epochs x ceil(examples / batch) (the reference's max_step),
    the first cut to `max_steps` when > 0; the learning rate decays over the uncut length."""
    steps = phase_config.epochs * math.ceil(num_examples / phase_config.batch_size)
    return (min(steps, phase_config.max_steps) if phase_config.max_steps > 0 else steps), steps


def run_phase(phase: Phase, state: Any, checkpoints: RunCheckpoints, metrics_path: str,
              writer: bool) -> PhaseResult:
    """Runs `phase` from `state`, or from the newest readable checkpoint in `checkpoints`.

    Every process runs it; only the `writer` logs metrics and shows progress. A checkpoint is restored
    onto the shardings of `state`, so a run may resume on a different mesh. On SIGINT / SIGTERM it
    checkpoints the last completed step, closes `checkpoints` and raises RunInterrupted (see the
    module docstring); on any other exception it closes `checkpoints` too.
    """
    try:
        with _StopSignals() as stop:
            return _run(phase, state, checkpoints, metrics_path, writer, stop)
    except BaseException:
        checkpoints.close()
        raise


def _run(phase: Phase, state: Any, checkpoints: RunCheckpoints, metrics_path: str, writer: bool,
         stop: _StopSignals) -> PhaseResult:
    started = time.monotonic()
    best = {"score": -math.inf, "step": -1, "metrics": {}}
    start_step, resumed_from = 0, None
    progress = Progress(phase.name, phase.total_steps, log_every=max(phase.total_steps // 20, 1)) if writer else None

    def say(text: str) -> None:
        if writer:
            progress.message(text)

    resumed = checkpoints.resume(phase.to_checkpoint(state))
    if resumed is not None:
        state, meta, resumed_from = phase.from_checkpoint(resumed.state), resumed.meta, resumed.path
        start_step = int(meta["step"])
        checkpoints.discard_best_after(start_step)
        best = {**meta["best"], "score": -math.inf if meta["best"]["score"] is None else float(meta["best"]["score"])}
        for loader, loader_state in zip(phase.loaders, meta["loaders"]):
            loader.epoch, loader.position = loader_state["epoch"], loader_state["position"]
        say(f"resuming the {phase.name} from step {start_step} ({resumed_from})")
    log = MetricsLog(metrics_path, start_step if start_step else None) if writer else None
    checkpoint_every = phase.checkpoint_every if phase.checkpoint_every > 0 else phase.eval_every

    def emit(step: int, metrics: dict, scores: dict[str, float]) -> None:
        """Logs one step: its metrics (fetched from the device here) and validation scores."""
        if writer:
            record = {"phase": phase.name, "step": step,
                      **{k: float(v) for k, v in jax.device_get(metrics).items()},
                      **{f"val_{k}": v for k, v in scores.items()}}
            log.write(record)
            progress.update(step, **{k: v for k, v in record.items() if k.startswith(("loss", "val_"))})

    def meta(step: int) -> dict:
        return {"step": step, "best": _json_best(best), "loaders": [loader.state() for loader in phase.loaders]}

    # A step's metrics are fetched after the next step is dispatched, so the device is not left idle
    # while the host logs and prepares batches; logging catches up before every checkpoint.
    pending, saved_step, evaluated = None, start_step, False
    for step in range(start_step + 1, phase.total_steps + 1):
        batches = next_aligned_batches(phase.loaders)
        if step == start_step + 1:
            say(f"compiling the {phase.name} step ... (first step only)")
        state, metrics = phase.step_fn(state, *batches)
        if pending is not None:
            emit(*pending)
        pending = (step, metrics, {})
        last = step == phase.total_steps
        if step % phase.eval_every == 0 or last:
            if not evaluated:
                say("compiling the evaluation ... (first evaluation only)")
                evaluated = True
            scores = phase.evaluate(state)
            emit(step, metrics, scores)
            pending = None
            score = next(iter(scores.values()))
            if score >= best["score"]:
                best = {"score": score, "step": step, "metrics": scores}
                checkpoints.save_best(step, phase.best_payload(state), meta(step),
                                      train_state=phase.to_checkpoint(state))
        stopping = stop.seen(at_boundary=step % checkpoint_every == 0 or step % phase.eval_every == 0 or last)
        if step % checkpoint_every == 0 or last or stopping is not None:
            if pending is not None:
                emit(*pending)
                pending = None
            checkpoints.save_latest(step, phase.to_checkpoint(state), meta(step))
            saved_step = step
        if stopping is not None:
            _stop(step, stopping, checkpoints, say)
    stopping = stop.seen(at_boundary=True)  # a signal after the last step's check (it is checkpointed)
    if stopping is not None:
        _stop(saved_step, stopping, checkpoints, say)
    return PhaseResult(state, best["score"], best["step"], best["metrics"], start_step, time.monotonic() - started,
                       phase=phase.name, total_steps=phase.total_steps, resumed_from=resumed_from)


def _stop(step: int, signum: int, checkpoints: RunCheckpoints, say: Callable[[str], None]) -> None:
    checkpoints.close()
    say(f"interrupted at step {step} ({signal.Signals(signum).name}): checkpoint saved, re-run the same "
        "command to resume")
    raise RunInterrupted(step, signum)


class _StopSignals:
    """While entered (on the main thread), SIGINT and SIGTERM only set `signum`; the loop asks `seen`
    between steps. A second signal of the kind already seen goes to the handler from before."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def seen(self, at_boundary: bool) -> int | None:
        """The signal to stop on after this step, or None. One process reads its own flag (once: a
        signal from here on is seen after the next step). The processes of a multi-process run must
        stop at the same step, so they agree only at evaluation / checkpoint steps (`at_boundary`),
        where they wait for each other anyway, and stop on any process's signal."""
        if jax.process_count() == 1:
            return self.signum
        if not at_boundary:
            return None
        signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
        return int(np.max(signums)) or None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == self.signum:
            signal.signal(signum, self._previous[signum])
            os.kill(os.getpid(), signum)


def _json_best(best: dict) -> dict:
    score = best["score"]
    return {**best, "score": None if not np.isfinite(score) else float(score)}
