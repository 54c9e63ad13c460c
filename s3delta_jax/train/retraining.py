"""`run_retrain(config, workdir, structure_path)`: re-train a chosen structure, on any Backbone.

A fresh backbone with only the structure's deltas, re-initialised and always on (no gates), and a
fresh task head where the backbone's task has one; AdamW on the full training split; the best
validation checkpoint is reloaded for the test split. Writes config.json, metrics.jsonl,
checkpoints/ and results.json into `workdir`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence

import jax
import ml_collections

from s3delta_jax.deltas.structure import Structure, StructureError, load_structure
from s3delta_jax.models.registry import load_backbone
from s3delta_jax.train import outputs
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.config_check import validate_config
from s3delta_jax.train.distributed import start_processes
from s3delta_jax.train.evaluate import Evaluator
from s3delta_jax.train.loop import Phase, phase_steps, run_phase
from s3delta_jax.train.prepare import check_run, load_task_data, place_backbone, record_run, train_batches
from s3delta_jax.train.retrainer import Retrainer
from s3delta_jax.train.searching import EXTRA_KEY_SALT
from s3delta_jax.train.summary import summary_lines, write_summary
from s3delta_jax.train.system import peak_memory_bytes


def run_retrain(config: ml_collections.ConfigDict, workdir: str, structure_path: str,
                allow_config_change: Sequence[str] = ()) -> dict:
    """Runs (or resumes) re-training of the structure in `structure_path`; returns results.json's dict.

    The workdir's run is bound to the config, the backbone and the structure's contents
    (`allow_config_change`: see run_search); a structure searched on another backbone is refused.
    """
    started = time.monotonic()
    validate_config(config)
    start_processes(config.distributed)  # before any JAX call, which tracing the backbone makes
    backbone = load_backbone(config.model)
    positions = backbone.positions()
    structure = load_structure(structure_path, positions)
    fingerprint = backbone.fingerprint()
    check_structure_backbone(structure, fingerprint)
    candidates = structure.candidates_for(positions)
    with open(structure_path, "rb") as f:
        structure_sha256 = hashlib.sha256(f.read()).hexdigest()
    run_fingerprint = {**fingerprint, "structure_sha256": structure_sha256}
    check_run(config, workdir, run_fingerprint, allow_config_change)
    data = load_task_data(config.data, backbone, config.seed)
    head = backbone.task_head(data.task, config.eval.method, config.eval.max_decode_length)
    if not candidates and jax.eval_shape(head.init_extra, jax.random.PRNGKey(0)) is None:
        raise StructureError(f"{structure_path}: chosen is empty and the {backbone.family} backbone trains no head "
                             f"on {data.task.name}, so nothing would re-train: choose at least one module")
    placed = place_backbone(backbone, config.seed, config.mesh)
    partitioner, params = placed.partitioner, placed.params
    writer = record_run(config, workdir, run_fingerprint, allow_config_change)
    setup_seconds = time.monotonic() - started

    phase_config = config.retrain
    steps, full_steps = phase_steps(len(data.encoded["train"]), phase_config)
    retrainer = Retrainer(
        backbone.module.apply, candidates, head.loss, total_steps=full_steps,
        learning_rate=phase_config.learning_rate, clip_norm=phase_config.clip_norm,
        jit=partitioner.step_jit(num_batches=1),
    )
    rng = jax.random.PRNGKey(config.seed + 1)
    extra = head.init_extra(jax.random.fold_in(rng, EXTRA_KEY_SALT))
    state = partitioner.replicate(retrainer.init(rng, extra=extra))
    evaluator = Evaluator(data.task, head, phase_config.eval_batch_size,
                          apply_for=lambda variables: retrainer.apply_fn(variables["delta"]), partitioner=partitioner)

    def evaluate_split(variables, split):
        return evaluator(params, variables, data.examples[split], data.encoded[split])

    def variables_of(state):
        return {"delta": state.delta, "extra": state.extra}

    checkpoints = RunCheckpoints(workdir)
    phase = Phase(
        name="retrain", total_steps=steps, eval_every=phase_config.eval_every,
        checkpoint_every=phase_config.checkpoint_every,
        step_fn=lambda s, batch: retrainer.step(s, params, partitioner.global_batch(batch)),
        loaders=[train_batches(data.encoded["train"], config, "retrain", config.seed, partitioner)],
        evaluate=lambda s: evaluate_split(variables_of(s), "validation")[0],
        best_payload=variables_of,
    )
    result = run_phase(phase, state, checkpoints, os.path.join(workdir, "metrics.jsonl"), writer)
    best, _ = checkpoints.restore_best(variables_of(result.state))
    checkpoints.close()
    test_metrics, test_predictions = evaluate_split(best, "test")
    trainable = structure.total_size
    results = {
        "phase": "retrain",
        "task": data.task.name,
        "structure": os.path.abspath(structure_path),
        "backbone": fingerprint,
        "best_step": result.best_step,
        "resumed_from_step": result.start_step,
        "val": result.best_metrics,
        "test": test_metrics,
        "main_score": next(iter(test_metrics.values())),
        "trainable_params": trainable,
        "modules": len(candidates),
        "backbone_params": backbone.num_params,
        "ratio_to_backbone": trainable / backbone.num_params,
        "devices": partitioner.describe(),
        "wall_seconds": {"setup": setup_seconds, "retrain": result.seconds, "total": time.monotonic() - started},
        "peak_memory_bytes": peak_memory_bytes(),
    }
    if writer:
        outputs.write_json(os.path.join(workdir, "results.json"), results)
        with open(os.path.join(workdir, "test_predictions.txt"), "w") as f:
            f.writelines(f"{prediction}\n" for prediction in test_predictions)
        paths = [os.path.join(workdir, name) for name in ("results.json", "test_predictions.txt")]
        write_summary(summary_lines(result, paths, modules=len(candidates), trainable_params=trainable,
                                                    backbone_params=backbone.num_params)
                              + [f"test {', '.join(f'{k} {v:.4g}' for k, v in test_metrics.items())}"])
    return results


def check_structure_backbone(structure: Structure, fingerprint: dict) -> None:
    """Refuses a structure searched on another backbone (its recorded fingerprint differs)."""
    recorded = structure.backbone_fingerprint
    if recorded is None or recorded == fingerprint:
        return
    fields = [f"{key} {recorded.get(key)!r} -> {fingerprint.get(key)!r}" for key in sorted(set(recorded) | set(fingerprint))
              if recorded.get(key) != fingerprint.get(key)]
    raise StructureError(f"{structure.source} was searched on another backbone ({'; '.join(fields)[:300]}): "
                         "re-train it on the backbone it was searched on, or delete backbone.fingerprint from the "
                         "file to re-train it on this one anyway")
