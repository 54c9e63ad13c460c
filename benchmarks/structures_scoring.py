"""Scores a finished re-training run on more rows: its best-on-validation deltas and head, reloaded.

run_retrain scores only the paper's test split. The benchmark also scores the task's own labelled
test file, so it reloads the payload the run kept as its best checkpoint ({"delta", "extra"}, as
retraining.py saves it) with `RunCheckpoints(workdir).restore_best` and evaluates it on the same
frozen backbone. What the package could expose instead: `run_retrain(..., extra_splits={name: rows})`
or a `score_retrained(config, workdir, structure_path, rows)`, so that this module need not know
the payload's layout.
"""

from __future__ import annotations

import jax
import ml_collections

from s3delta_jax.deltas import init_delta, load_structure, with_deltas
from s3delta_jax.models.backbone import Backbone
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.evaluate import Evaluator

from structures_data import SplitData, task_of


def frozen_params(backbone: Backbone, seed: int):
    """The backbone weights a run with this seed trained on: the checkpoint's, or the random ones that
    train.prepare.place_backbone draws from PRNGKey(seed)."""
    if backbone.checkpoint_dir is not None:
        return jax.device_put(backbone.load_params())
    return jax.jit(backbone.init_params)(jax.random.PRNGKey(seed))


def score_retrained(config: ml_collections.ConfigDict, backbone: Backbone, workdir: str, structure_path: str,
                    split: SplitData, params=None) -> dict[str, float]:
    """Metrics (task order, in percent) of the run in `workdir` at its best validation step on `split`.

    `params`: the frozen backbone weights (default: `frozen_params(backbone, config.seed)`).
    """
    positions = backbone.positions()
    candidates = load_structure(structure_path, positions).candidates_for(positions)
    task = task_of(config)
    head = backbone.task_head(task, config.eval.method, config.eval.max_decode_length)
    key = jax.random.PRNGKey(0)  # only shapes matter: restore_best overwrites every value
    with RunCheckpoints(workdir) as checkpoints:
        best, _ = checkpoints.restore_best({"delta": init_delta(key, candidates), "extra": head.init_extra(key)})
    evaluator = Evaluator(task, head, config.retrain.eval_batch_size,
                          apply_for=lambda variables: with_deltas(backbone.module.apply, candidates, variables["delta"]))
    if params is None:
        params = frozen_params(backbone, config.seed)
    metrics, _ = evaluator(params, best, split.examples, split.encoded)
    return metrics
