"""Orbax checkpoints of a run: the latest states (for resume) and the best-on-validation state.

Layout inside the workdir:
  checkpoints/latest/<step>/  state: the full train state; meta: JSON (step, loader positions, best so far)
  checkpoints/best/<step>/    the same, and payload: what selection / testing reload (`restore_best`)
  checkpoints/unreadable/     steps found unreadable when a run fell back to an older one
Each step also holds files.json, every file's size and CRC-32, written once orbax has finished the
step. Orbax writes a step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact; leftover temporary directories are removed when the
checkpoints are opened and after a failed save.

Reading a step first checks its files against files.json, so truncated, bit-flipped or missing files
(orbax itself reads a flipped bit of array data without noticing) are found without asking orbax to
read them. `resume` takes the newest readable step of latest and best (the best step holds the full
state too, so a run whose latest steps are gone resumes exactly from it); every unreadable step is
reported in one line with its full path and, once an older step is read, moved to unreadable/ (orbax
does not save a step older than one it still lists). Only when no step is readable is it a UserError,
and then nothing is moved.

When an orbax read or write fails (a step without files.json, a state that does not fit, a full
disk), the operations it had started for the other arrays complete after its event loop has closed,
and tensorstore reports each as "RuntimeError: Event loop is closed" through sys.unraisablehook, even
before the error reaches us, and asyncio logs the failures of the reads that nobody awaited any more
("Task exception was never retrieved", with orbax's traceback); those reports say nothing the one line
about the step does not, so they are dropped once RunCheckpoints is created, as are orbax's log lines
about a step's unreadable metadata file (the step is reported when it is read).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from s3delta_jax.errors import UserError
from s3delta_jax.train.checkpoint_integrity import file_problem, write_file_table

UNREADABLE = "unreadable"
KINDS = ("latest", "best")
_KEEP = {"latest": 2, "best": 1}
_TMP_GLOB = "*.orbax-checkpoint-tmp*"


class CheckpointError(UserError):
    """No checkpoint of a run can be read; the message names each one and why."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a restore read: the items, the step's JSON meta, and the step's directory."""

    items: dict[str, Any]
    meta: dict[str, Any]
    path: str

    @property
    def state(self) -> Any:
        return self.items["state"]


class _Unreadable(Exception):
    """A step that cannot be read; str() is the one-line report."""


class RunCheckpoints:
    """The latest and the best checkpoints of one run (use as a context manager, or call `close`)."""

    def __init__(self, workdir: str):
        _drop_closed_loop_reports()
        _add_log_filter("absl", _StepMetadataLogFilter())
        _add_log_filter("asyncio", _OrbaxTaskLogFilter())
        self.root = os.path.abspath(os.path.join(workdir, "checkpoints"))
        if jax.process_index() == 0:
            for kind in KINDS:
                _remove_tmp_dirs(os.path.join(self.root, kind))
        self._managers = {
            kind: ocp.CheckpointManager(os.path.join(self.root, kind), options=ocp.CheckpointManagerOptions(
                max_to_keep=_KEEP[kind], create=True))
            for kind in KINDS
        }
        self._closed = False

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self._managers["latest"].latest_step()

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        """The full train state after `step`, with the loop's `meta` (JSON)."""
        self._save("latest", step, {"state": state}, meta)

    def save_best(self, step: int, payload: Any, meta: dict, train_state: Any = None) -> None:
        """The best-so-far `payload` (what `restore_best` returns) and, for an exact resume from it,
        the full `train_state` with the loop's `meta`."""
        items = {"payload": payload} if train_state is None else {"payload": payload, "state": train_state}
        self._save("best", step, items, meta)

    def resume(self, abstract_state: Any) -> Restored | None:
        """The newest readable full state among latest and best (latest first at equal steps), restored
        onto the shardings of `abstract_state`; None when the run has no checkpoint; a CheckpointError
        when none is readable."""
        candidates = [(kind, step) for kind in KINDS for step in self._managers[kind].all_steps()
                      if os.path.isdir(os.path.join(self._path(kind, step), "state"))]
        candidates.sort(key=lambda candidate: (candidate[1], candidate[0] == "latest"), reverse=True)
        return self._newest_readable(candidates, {"state": abstract_state}) if candidates else None

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        """(state, meta) of the newest readable latest step."""
        restored = self._newest_readable([("latest", s) for s in self._steps("latest")], {"state": abstract_state})
        return restored.state, restored.meta

    def restore_best(self, abstract_payload: Any) -> tuple[Any, dict]:
        """(payload, meta) of the best checkpoint."""
        restored = self._newest_readable([("best", s) for s in self._steps("best")], {"payload": abstract_payload})
        return restored.items["payload"], restored.meta

    def discard_best_after(self, step: int) -> None:
        """Drops best checkpoints newer than `step` (written after the checkpoint a run resumes from)."""
        for newer in [s for s in self._managers["best"].all_steps() if s > step]:
            self._managers["best"].delete(newer)

    def has_best(self) -> bool:
        return self._managers["best"].latest_step() is not None

    def close(self) -> None:
        """Waits for pending saves and closes the managers (again: a no-op)."""
        if self._closed:
            return
        self._closed = True
        for manager in self._managers.values():
            try:
                manager.wait_until_finished()
            finally:
                manager.close()

    def _path(self, kind: str, step: int) -> str:
        return os.path.join(self.root, kind, str(step))

    def _steps(self, kind: str) -> list[int]:
        steps = sorted(self._managers[kind].all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no {kind} checkpoint in {os.path.join(self.root, kind)}: run the "
                                  "search/training first")
        return steps

    def _save(self, kind: str, step: int, items: dict[str, Any], meta: dict) -> None:
        manager, step = self._managers[kind], int(step)
        if step in manager.all_steps():  # re-reached after a resume: replace it
            manager.delete(step)
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        try:
            manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()
        except BaseException:
            _remove_tmp_dirs(str(manager.directory), settle_s=0.5)
            raise
        if jax.process_index() == 0:
            write_file_table(self._path(kind, step))

    def _newest_readable(self, candidates: list[tuple[str, int]], abstract_items: dict[str, Any]) -> Restored:
        """The first of `candidates` ((kind, step), newest first) that reads. The unreadable ones before
        it are reported (one line each) and moved aside; if none reads, a CheckpointError names them all."""
        problems: list[str] = []
        for index, (kind, step) in enumerate(candidates):
            try:
                restored = self._read(kind, step, abstract_items)
            except _Unreadable as problem:
                problems.append(str(problem))
                continue
            if problems:
                for problem in problems:
                    _say(problem)
                self._move_aside(candidates[:index])
                _say(f"falling back to the older checkpoint {restored.path} (the unreadable ones are moved to "
                     f"{os.path.join(self.root, UNREADABLE)})")
            return restored
        raise CheckpointError(f"no readable checkpoint in {self.root}: {'; '.join(problems)}: restore the "
                              "files, or use a new --workdir")

    def _read(self, kind: str, step: int, abstract_items: dict[str, Any]) -> Restored:
        path = self._path(kind, step)
        problem = file_problem(path)
        if problem:
            raise _Unreadable(f"checkpoint {path} is unreadable ({problem})")
        args = {name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
                for name, tree in abstract_items.items()}
        try:
            restored = self._managers[kind].restore(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonRestore()))
        except Exception as error:  # orbax raises many types for unreadable or mismatched files
            raise _Unreadable(f"checkpoint {path} is unreadable ({_first_words(error)})") from None
        return Restored({name: restored[name] for name in abstract_items}, dict(restored.meta), path)

    def _move_aside(self, steps: list[tuple[str, int]]) -> None:
        """Moves unreadable steps to checkpoints/unreadable/<kind>-<step> (process 0, shared storage)."""
        if jax.process_index() == 0:
            aside = os.path.join(self.root, UNREADABLE)
            os.makedirs(aside, exist_ok=True)
            for kind, step in steps:
                target = os.path.join(aside, f"{kind}-{step}")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(self._path(kind, step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("s3delta_jax checkpoints moved aside")
        for manager in self._managers.values():
            manager.reload()


def _remove_tmp_dirs(directory: str, settle_s: float = 0.0, timeout_s: float = 30.0) -> None:
    """Removes orbax's temporary step directories in `directory`. With `settle_s` it keeps removing
    them until none has come back for that long: the writes a failed save had started still run on
    orbax's threads and create their directories again."""
    started = quiet_since = time.monotonic()
    while True:
        leftovers = glob.glob(os.path.join(directory, _TMP_GLOB))
        for tmp in leftovers:
            shutil.rmtree(tmp, ignore_errors=True)
        now = time.monotonic()
        if leftovers:
            quiet_since = now
        if now - quiet_since >= settle_s or now - started > timeout_s:
            return
        time.sleep(0.05)


def _first_words(error: BaseException, limit: int = 160) -> str:
    """`Type: message` of an orbax error, its first line cut at a space before `limit` characters (so a
    path in it is either whole or left out)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: text.rfind(" ", 0, limit)] + " ..."


def _drop_closed_loop_reports() -> None:
    """From now on, sys.unraisablehook drops 'Event loop is closed' RuntimeErrors (see the module
    docstring); every other report goes to the previous hook. Installing it twice is a no-op."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


class _StepMetadataLogFilter(logging.Filter):
    """Drops orbax's log records about an unreadable step metadata file (_CHECKPOINT_METADATA): orbax
    logs them whenever it lists the steps, and the step is reported in one line when it is read."""

    PREFIXES = ("Failed to json parse Metadata file", "Failed to read Metadata file", "Metadata file does not exist")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.pathname.endswith(os.path.join("metadata", "checkpoint.py"))
                    and str(record.msg).startswith(self.PREFIXES))


class _OrbaxTaskLogFilter(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records whose exception was raised in
    orbax: the other reads of a failed restore, left running when the first failure was raised."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Task exception was never retrieved") or not record.exc_info:
            return True
        traceback = record.exc_info[2]
        while traceback is not None:
            if f"{os.sep}orbax{os.sep}" in traceback.tb_frame.f_code.co_filename:
                return False
            traceback = traceback.tb_next
        return True


def _add_log_filter(logger_name: str, log_filter: logging.Filter) -> None:
    """Adds `log_filter` to the named logger unless one of its type is there already."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, type(log_filter)) for f in logger.filters):
        logger.addFilter(log_filter)


def _say(message: str) -> None:
    """One line on stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
