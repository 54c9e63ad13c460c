"""run_phase on a toy step (no model): signals checkpoint and exit, resumes are exact; Progress's ETA."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.train import progress as progress_lib
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.loop import Phase, run_phase

TOTAL_STEPS, EVAL_EVERY = 12, 3


class ToyBatcher:
    """Batches of one toy loader: a seeded float32 [4] vector per batch of indices; one bucket."""

    def padded_lengths(self, indices: np.ndarray) -> tuple[int, int]:
        return 4, 1

    def batch(self, indices: np.ndarray, at_least: tuple[int, int] = (0, 0)) -> np.ndarray:
        return np.random.default_rng(indices.tolist()).normal(size=(4,)).astype(np.float32)


class ToyBatches:
    """An endless, seeded batch iterator with TrainBatches' interface (positions, next_indices, batcher)."""

    def __init__(self, seed: int, batches_per_epoch: int = 5):
        self.seed, self.batches_per_epoch = seed, batches_per_epoch
        self.epoch, self.position = 0, 0
        self.batcher = ToyBatcher()

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def next_indices(self) -> np.ndarray:
        indices = np.array([self.seed, self.epoch, self.position])
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return indices


@jax.jit
def toy_step(state, batch_a, batch_b):
    """A noisy gradient step towards the batches' mean, with an RNG carried in the state."""
    rng, key = jax.random.split(state["rng"])
    target = 0.5 * (batch_a + batch_b) + 0.1 * jax.random.normal(key, (4,))
    loss = jnp.mean((state["w"] - target) ** 2)
    return {"w": state["w"] - 0.3 * (state["w"] - target), "rng": rng, "step": state["step"] + 1}, {"loss": loss}


def initial_state():
    return {"w": jnp.zeros((4,)), "rng": jax.random.PRNGKey(0), "step": jnp.zeros((), jnp.int32)}


def toy_phase(signal_at: tuple[int, int] | None = None, checkpoint_every: int = -1) -> Phase:
    """The phase; with `signal_at=(step, signum)` it sends itself the signal from inside that step."""
    calls = {"count": 0}

    def step_fn(state, batch_a, batch_b):
        calls["count"] += 1
        out = toy_step(state, batch_a, batch_b)
        if signal_at is not None and int(out[0]["step"]) == signal_at[0]:
            os.kill(os.getpid(), signal_at[1])
        return out

    return Phase(
        name="toy", total_steps=TOTAL_STEPS, eval_every=EVAL_EVERY, checkpoint_every=checkpoint_every,
        step_fn=step_fn, loaders=[ToyBatches(1), ToyBatches(2)],
        evaluate=lambda state: {"score": float(-jnp.abs(state["w"]).sum() + 0.05 * state["step"]),
                                "size": float(jnp.abs(state["w"]).sum())},
        best_payload=lambda state: {"w": state["w"]},
    )


def run(workdir: Path, phase: Phase):
    with RunCheckpoints(str(workdir)) as checkpoints:
        return run_phase(phase, initial_state(), checkpoints, str(workdir / "metrics.jsonl"), writer=True)


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, run(workdir, toy_phase())


def assert_same_run(workdir: Path, result, reference) -> None:
    reference_dir, reference_result = reference
    np.testing.assert_array_equal(np.asarray(result.state["w"]), np.asarray(reference_result.state["w"]))
    np.testing.assert_array_equal(np.asarray(result.state["rng"]), np.asarray(reference_result.state["rng"]))
    assert (result.best_step, result.best_score) == (reference_result.best_step, reference_result.best_score)
    assert metrics(workdir) == metrics(reference_dir)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_step_exits_and_the_rerun_ends_as_an_uninterrupted_run(
        tmp_path, capsys, uninterrupted, signum, code):
    interrupted_at = 5  # neither an evaluation nor a checkpoint step
    handler_before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path, toy_phase(signal_at=(interrupted_at, signum)))
    assert stopped.value.code == code
    err_lines = capsys.readouterr().err.splitlines()
    assert [line for line in err_lines if line.startswith("interrupted")] == [
        f"interrupted at step {interrupted_at} ({signal.Signals(signum).name}): checkpoint saved, "
        "re-run the same command to resume"]
    assert "Traceback" not in "\n".join(err_lines)
    assert signal.getsignal(signum) is handler_before
    with RunCheckpoints(str(tmp_path)) as checkpoints:
        assert checkpoints.latest_step() == interrupted_at
    assert [record["step"] for record in metrics(tmp_path)] == list(range(1, interrupted_at + 1))

    result = run(tmp_path, toy_phase())
    assert result.start_step == interrupted_at and result.resumed_from.endswith(f"latest/{interrupted_at}")
    assert f"resuming the toy from step {interrupted_at}" in capsys.readouterr().err
    assert_same_run(tmp_path, result, uninterrupted)


def test_without_latest_checkpoints_the_run_resumes_exactly_from_the_best_one(tmp_path, uninterrupted):
    with pytest.raises(SystemExit):
        run(tmp_path, toy_phase(signal_at=(8, signal.SIGINT)))
    best_steps = [int(p.name) for p in (tmp_path / "checkpoints" / "best").iterdir()]
    shutil.rmtree(tmp_path / "checkpoints" / "latest")
    result = run(tmp_path, toy_phase())
    assert result.start_step == max(best_steps) > 0
    assert_same_run(tmp_path, result, uninterrupted)


def test_the_screen_says_what_compiles_before_the_first_step_and_evaluation(tmp_path, capsys):
    run(tmp_path, toy_phase())
    err = capsys.readouterr().err
    step_notice = err.index("compiling the toy step ... (first step only)")
    eval_notice = err.index("compiling the evaluation ... (first evaluation only)")
    assert step_notice < eval_notice < err.index("val_score=")
    assert err.count("compiling") == 2


def test_phase_result_carries_the_summary_fields(uninterrupted):
    _, result = uninterrupted
    assert (result.phase, result.total_steps, result.resumed_from, result.primary_metric) == ("toy", TOTAL_STEPS, None,
                                                                                               "score")
    assert result.best_step % EVAL_EVERY == 0 and result.best_metrics["score"] == result.best_score


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_ignores_the_time_before_the_first_update(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    progress = progress_lib.Progress("search", total=101, stream=open(os.devnull, "w"))
    clock.now += 600.0  # the first step: compilation
    progress.update(1)
    assert progress.line(1).endswith("ETA --:--")
    clock.now += 10.0  # then 1 s per step
    progress.update(11)
    assert progress.line(11).endswith("ETA 01:30")
