"""Orbax checkpoints of a run: the latest state (for resume) and the best-on-validation state.

Layout inside the workdir:
  checkpoints/latest/<step>/  the full train state + JSON metadata (data position, best score, ...)
  checkpoints/best/<step>/    the state at the best validation score (what selection / testing reload)
Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from s3delta_jax.train.errors import UserError


class RunCheckpoints:
    """The latest and the best checkpoint of one run."""

    def __init__(self, workdir: str):
        root = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._latest = ocp.CheckpointManager(
            os.path.join(root, "latest"), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )
        self._best = ocp.CheckpointManager(
            os.path.join(root, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        _save(self._latest, step, state, meta)

    def save_best(self, step: int, state: Any, meta: dict) -> None:
        _save(self._best, step, state, meta)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        return _restore(self._latest, abstract_state, "latest")

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict]:
        return _restore(self._best, abstract_state, "best")

    def discard_best_after(self, step: int) -> None:
        """Drops best checkpoints newer than `step` (written after the checkpoint a run resumes from)."""
        for newer in [s for s in self._best.all_steps() if s > step]:
            self._best.delete(newer)

    def has_best(self) -> bool:
        return self._best.latest_step() is not None

    def close(self) -> None:
        for manager in (self._latest, self._best):
            manager.wait_until_finished()
            manager.close()


def _save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    if int(step) in manager.all_steps():  # re-reached after a resume: replace it
        manager.delete(int(step))
    manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    manager.wait_until_finished()


def _restore(manager: ocp.CheckpointManager, abstract_state: Any, which: str) -> tuple[Any, dict]:
    step = manager.latest_step()
    if step is None:
        raise UserError(f"no {which} checkpoint in {manager.directory}: run the search/training first")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
    except Exception as error:  # orbax raises many types for unreadable or mismatched files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"unreadable checkpoint {manager.directory}/{step} ({type(error).__name__}: {first_line[:200]}): "
            "delete that step directory to fall back to the previous one, or use a new --workdir"
        ) from error
    return restored.state, dict(restored.meta)
