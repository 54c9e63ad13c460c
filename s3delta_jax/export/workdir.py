"""`Retrained` (what an export reads) and `load_retrained(workdir)`, its reader for run_retrain.py's workdirs.

A finished re-training workdir holds config.json (the run's config), results.json (phase "retrain",
the structure file's path, the backbone's fingerprint) and the best checkpoint, whose payload is
{"delta": the structure's weights, "extra": the encoder's classifier head, or None for T5}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from s3delta_jax import data as data_lib
from s3delta_jax.deltas.inject import init_delta
from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.deltas.structure import load_structure
from s3delta_jax.export.refusal import ExportError
from s3delta_jax.models.backbone import Backbone, Params
from s3delta_jax.models.registry import load_backbone
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.workdir import read_run_identity


@dataclasses.dataclass(frozen=True)
class Retrained:
    """A re-trained structure on its frozen backbone.

    Attributes:
      backbone: the frozen model (t5 or bert family).
      params: its frozen weights (the 'params' collection).
      candidates: the structure's deltas.
      delta: their weights, nested as `deltas.init_delta` makes them.
      extra: an encoder's classifier head, {"classifier": {"kernel": f32[H, C], "bias": f32[C]}}; None for T5.
      task: the task the head predicts (its label names; no label names: one regression score).
    """

    backbone: Backbone
    params: Params
    candidates: Sequence[Candidate]
    delta: Any
    extra: Params | None = None
    task: data_lib.Task | None = None


def load_retrained(workdir: str) -> Retrained:
    """The backbone, structure and best checkpoint of a finished run_retrain.py workdir.

    Raises ExportError for a workdir that is not a finished re-training, or whose structure file or
    backbone changed since; writes nothing into the workdir.
    """
    results = _read_results(workdir)
    best = os.path.join(workdir, "checkpoints", "best")
    if not (os.path.isdir(best) and os.listdir(best)):
        raise ExportError(f"{workdir} has no best checkpoint ({best}): the re-training did not finish; run "
                          "run_retrain.py on it to the end first")
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    backbone = load_backbone(config.model)
    if results.get("backbone") != backbone.fingerprint():
        raise ExportError(f"the backbone {config.model.name!r} is not the one {workdir} was re-trained on (its "
                          "weights or shapes changed): export it where the re-training's backbone is")
    structure_path = results["structure"]
    _check_structure_unchanged(workdir, structure_path)
    positions = backbone.positions()
    candidates = load_structure(structure_path, positions).candidates_for(positions)
    task = data_lib.get_task(config.data.task, config.data.fix_reference_bugs)
    head = backbone.task_head(task, config.eval.method, config.eval.max_decode_length)
    key = jax.random.PRNGKey(0)
    abstract = {"delta": jax.eval_shape(lambda k: init_delta(k, candidates), key),
                "extra": jax.eval_shape(head.init_extra, key)}
    with RunCheckpoints(workdir) as checkpoints:
        payload, _ = checkpoints.restore_best(abstract)
    if backbone.checkpoint_dir:
        params = backbone.load_params()
    else:
        params = jax.jit(backbone.init_params)(jax.random.PRNGKey(config.seed))
    extra = payload["extra"]
    return Retrained(backbone, params, candidates, payload["delta"], extra, task if extra is not None else None)


def _read_results(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise ExportError(f"{workdir} has no results.json, so it is not a finished re-training: export the "
                          "--workdir of a run_retrain.py run that ran to the end (a search's is WORKDIR/retrain)")
    with open(path) as f:
        results = json.load(f)
    if results.get("phase") != "retrain":
        raise ExportError(f"{path} is the result of a {results.get('phase')!r} phase, not of a re-training: export "
                          "the re-training's workdir (a search's is WORKDIR/retrain)")
    return results


def _check_structure_unchanged(workdir: str, structure_path: str) -> None:
    """Raises ExportError when the structure file is gone or differs from the one re-trained."""
    if not os.path.isfile(structure_path):
        raise ExportError(f"the structure {structure_path} that {workdir} re-trained is gone: put it back there")
    recorded = read_run_identity(workdir)
    expected = recorded[0].backbone.get("structure_sha256") if recorded else None
    with open(structure_path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if expected is not None and actual != expected:
        raise ExportError(f"the structure {structure_path} changed since {workdir} re-trained it: restore the "
                          "re-trained version")
