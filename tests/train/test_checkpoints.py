"""RunCheckpoints: corrupt steps fall back to the newest readable one, best-only resume, no stray files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.errors import UserError
from s3delta_jax.train.checkpoints import RunCheckpoints

ROOT = Path(__file__).resolve().parents[2]


def state_at(step: int) -> dict:
    return {"w": jnp.arange(256, dtype=jnp.float32) * step, "opt": {"mu": jnp.full((8,), float(step))},
            "step": jnp.asarray(step, jnp.int32)}


def meta_at(step: int) -> dict:
    return {"step": step, "best": {"score": 0.5, "step": step, "metrics": {"accuracy": 0.5}},
            "loaders": [{"epoch": 0, "position": step}]}


@pytest.fixture
def two_steps(tmp_path):
    """A workdir with latest steps 1 and 2."""
    with RunCheckpoints(str(tmp_path)) as checkpoints:
        for step in (1, 2):
            checkpoints.save_latest(step, state_at(step), meta_at(step))
    return tmp_path


def step_dir(workdir: Path, kind: str, step: int) -> Path:
    return workdir / "checkpoints" / kind / str(step)


def array_files(step: Path) -> list[Path]:
    """The files holding array data (tensorstore's `d/` chunks) of a step's state."""
    files = [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data under {step}"
    return files


def truncate(files: list[Path]) -> None:
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def assert_state(restored: dict, step: int) -> None:
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state_at(step)["w"]))
    assert int(restored["step"]) == step


def resume(workdir: Path):
    with RunCheckpoints(str(workdir)) as checkpoints:
        return checkpoints.resume(state_at(0))


@pytest.mark.parametrize("corrupt", [
    lambda step: truncate(array_files(step)),
    lambda step: flip_one_bit(max(array_files(step), key=lambda p: p.stat().st_size)),
    lambda step: (step / "meta" / "metadata").unlink(),
    lambda step: [path.write_bytes(b"not a checkpoint") for path in step.rglob("*") if path.is_file()],
], ids=["truncated", "bit-flipped", "metadata-missing", "overwritten"])
def test_a_corrupt_newest_step_falls_back_to_the_older_one_in_one_line(two_steps, capfd, caplog, corrupt):
    newest = step_dir(two_steps, "latest", 2)
    corrupt(newest)
    restored = resume(two_steps)
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]
    assert_state(restored.state, 1)
    assert restored.meta == meta_at(1) and restored.path == str(step_dir(two_steps, "latest", 1))
    lines = capfd.readouterr().err.splitlines()
    problem = [line for line in lines if "unreadable (" in line]
    assert len(problem) == 1 and f"checkpoint {newest} is unreadable" in problem[0]
    assert any(line.startswith("falling back to the older checkpoint ") and line.endswith(")") for line in lines)
    assert not any("Event loop is closed" in line or "Traceback" in line for line in lines)
    assert not newest.exists() and (two_steps / "checkpoints" / "unreadable" / "latest-2").is_dir()


def test_after_a_fallback_the_run_saves_the_steps_it_redoes(two_steps):
    truncate(array_files(step_dir(two_steps, "latest", 2)))
    with RunCheckpoints(str(two_steps)) as checkpoints:
        checkpoints.resume(state_at(0))
        checkpoints.save_latest(2, state_at(2), meta_at(2))
        assert checkpoints.latest_step() == 2
    assert_state(resume(two_steps).state, 2)


def test_no_readable_step_is_one_user_error_that_moves_nothing(two_steps):
    for step in (1, 2):
        truncate(array_files(step_dir(two_steps, "latest", step)))
    with pytest.raises(UserError) as raised:
        resume(two_steps)
    message = str(raised.value)
    assert "\n" not in message and str(step_dir(two_steps, "latest", 2)) in message
    assert str(step_dir(two_steps, "latest", 1)) in message
    assert step_dir(two_steps, "latest", 1).is_dir() and step_dir(two_steps, "latest", 2).is_dir()


def test_resume_from_the_best_checkpoint_when_the_latest_ones_are_gone(tmp_path):
    with RunCheckpoints(str(tmp_path)) as checkpoints:
        checkpoints.save_best(3, {"w": state_at(3)["w"]}, meta_at(3), train_state=state_at(3))
        checkpoints.save_latest(4, state_at(4), meta_at(4))
    shutil.rmtree(tmp_path / "checkpoints" / "latest")
    with RunCheckpoints(str(tmp_path)) as checkpoints:
        restored = checkpoints.resume(state_at(0))
        payload, meta = checkpoints.restore_best({"w": state_at(0)["w"]})
    assert restored.path == str(step_dir(tmp_path, "best", 3)) and restored.meta == meta_at(3)
    assert_state(restored.state, 3)
    np.testing.assert_array_equal(np.asarray(payload["w"]), np.asarray(state_at(3)["w"]))
    assert meta == meta_at(3)


def test_the_newest_step_wins_whether_latest_or_best(tmp_path):
    with RunCheckpoints(str(tmp_path)) as checkpoints:
        checkpoints.save_latest(2, state_at(2), meta_at(2))
        checkpoints.save_best(5, {"w": state_at(5)["w"]}, meta_at(5), train_state=state_at(5))
        assert checkpoints.resume(state_at(0)).path == str(step_dir(tmp_path, "best", 5))
        checkpoints.save_latest(5, state_at(5), meta_at(5))
        assert checkpoints.resume(state_at(0)).path == str(step_dir(tmp_path, "latest", 5))


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert resume(tmp_path) is None


def test_a_failed_save_leaves_no_temporary_directory(tmp_path, capfd):
    checkpoints = RunCheckpoints(str(tmp_path))
    with pytest.raises(TypeError):
        checkpoints.save_latest(1, state_at(1), {"not json": object()})
    leftovers = list((tmp_path / "checkpoints").rglob("*.orbax-checkpoint-tmp*"))
    assert leftovers == []
    assert "Event loop is closed" not in capfd.readouterr().err
    checkpoints.save_latest(1, state_at(1), meta_at(1))
    checkpoints.close()
    assert_state(resume(tmp_path).state, 1)


def test_temporary_directories_of_a_killed_save_are_removed_on_open(tmp_path):
    stray = tmp_path / "checkpoints" / "latest" / "7.orbax-checkpoint-tmp"
    (stray / "state").mkdir(parents=True)
    RunCheckpoints(str(tmp_path)).close()
    assert not stray.exists()


def test_an_orbax_failure_prints_no_event_loop_tracebacks(tmp_path):
    """A step without files.json goes to orbax unchecked; its failed reads must stay quiet."""
    script = textwrap.dedent(f"""
        import glob, os, sys
        import jax.numpy as jnp
        from s3delta_jax.train.checkpoints import RunCheckpoints
        workdir = {str(tmp_path)!r}
        state = {{f"a{{i}}": jnp.full((16,), float(i)) for i in range(200)}}
        with RunCheckpoints(workdir) as checkpoints:
            checkpoints.save_latest(1, state, {{"step": 1}})
            checkpoints.save_latest(2, state, {{"step": 2}})
        step = os.path.join(workdir, "checkpoints", "latest", "2")
        os.remove(os.path.join(step, "files.json"))
        for path in glob.glob(os.path.join(step, "state", "**", "d", "*"), recursive=True):
            os.truncate(path, 10)
        checkpoints = RunCheckpoints(workdir)
        print("resumed from", checkpoints.resume(state).path)
        sys.exit(0)  # without close(), as a program that stops on an error would
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(os.path.join("latest", "1"))
    assert "Event loop is closed" not in done.stderr and "Traceback" not in done.stderr


def test_only_orbax_tasks_never_retrieved_are_dropped_from_the_asyncio_log(tmp_path, caplog):
    """The failed reads of a restore that nobody awaits are logged by asyncio when collected (which
    one and when is up to the garbage collector): those raised in orbax go, every other one stays."""
    import logging

    import orbax.checkpoint as ocp

    RunCheckpoints(str(tmp_path)).close()
    try:
        ocp.CheckpointManager(str(tmp_path / "none")).restore(3)
    except Exception as error:  # raised inside orbax: no step 3
        orbax_error = error
    try:
        raise ValueError("ours")
    except ValueError as error:
        our_error = error
    asyncio_log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for error in (orbax_error, our_error):
            asyncio_log.error("Task exception was never retrieved\nfuture: <Task finished>",
                              exc_info=(type(error), error, error.__traceback__))
    assert [record.exc_info[1] for record in caplog.records] == [our_error]
