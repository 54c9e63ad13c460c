"""`run_retrain(config, workdir, structure_path)`: re-train a chosen structure (reference section 5).

A fresh backbone with only the structure's deltas, re-initialised and always on (no gates); AdamW on
the full training split; the best validation checkpoint is reloaded for the test split. Writes
config.json, metrics.jsonl, checkpoints/ and results.json into `workdir`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import flax.struct
import jax
import ml_collections
import optax

from s3delta_jax.deltas.inject import init_delta, with_deltas
from s3delta_jax.deltas.structure import load_structure
from s3delta_jax.search.step import adamw_with_linear_decay, clip_by_global_norm
from s3delta_jax.train import outputs
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.evaluate import Evaluator
from s3delta_jax.train.loop import Phase, phase_steps, run_phase
from s3delta_jax.train.setup import (
    backbone_positions, load_backbone, load_task_data, seq2seq_loss, start_run, train_batches,
)
from s3delta_jax.train.system import peak_memory_bytes


class RetrainState(flax.struct.PyTreeNode):
    step: jax.Array
    delta: Any
    opt_state: Any
    rng: jax.Array


def make_retrain_step(loss_fn, model_apply, candidates, optimizer: optax.GradientTransformation,
                      clip_norm: float) -> Callable:
    """`step(state, params, batch) -> (state, metrics)`: one clipped AdamW step on the deltas only."""

    def step(state: RetrainState, params: Any, batch: Any):
        rng, dropout_key = jax.random.split(state.rng)

        def loss_of(delta):
            return loss_fn(with_deltas(model_apply, candidates, delta), params, batch, dropout_key)

        loss, grads = jax.value_and_grad(loss_of)(state.delta)
        grads = clip_by_global_norm(grads, clip_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.delta)
        delta = optax.apply_updates(state.delta, updates)
        return RetrainState(state.step + 1, delta, opt_state, rng), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def run_retrain(config: ml_collections.ConfigDict, workdir: str, structure_path: str) -> dict:
    """Runs (or resumes) re-training of the structure in `structure_path`; returns results.json's dict."""
    started = time.monotonic()
    writer = start_run(config, workdir)
    backbone = load_backbone(config.model, config.seed, config.mesh)
    partitioner = backbone.partitioner
    positions = backbone_positions(backbone)
    structure = load_structure(structure_path, positions)
    candidates = structure.candidates_for(positions)
    data = load_task_data(config.data, backbone.tokenizer, config.seed, with_search_halves=False)
    setup_seconds = time.monotonic() - started

    phase_config = config.retrain
    steps, full_steps = phase_steps(len(data.encoded["train"]), phase_config)
    optimizer, _ = adamw_with_linear_decay(phase_config.learning_rate, full_steps)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed + 1))
    delta = init_delta(init_key, candidates)
    state = partitioner.replicate(
        RetrainState(jax.numpy.zeros((), jax.numpy.int32), delta, optimizer.init(delta), state_key))
    step_fn = partitioner.jit(
        make_retrain_step(seq2seq_loss(backbone.config), backbone.model.apply, candidates, optimizer,
                          phase_config.clip_norm),
        in_shardings=(partitioner.replicated, partitioner.param_shardings, partitioner.batch),
        out_shardings=partitioner.replicated, donate_argnums=(0,),
    )
    params = backbone.params
    evaluator = Evaluator(
        data.task, backbone.tokenizer, backbone.config, config.eval.method, phase_config.eval_batch_size,
        config.eval.max_decode_length,
        apply_for=lambda delta: with_deltas(backbone.model.apply, candidates, delta),
        partitioner=partitioner,
    )

    def evaluate_split(delta, split):
        return evaluator(params, delta, data.examples[split], data.encoded[split])

    checkpoints = RunCheckpoints(workdir)
    phase = Phase(
        name="retrain", total_steps=steps, eval_every=phase_config.eval_every,
        checkpoint_every=phase_config.checkpoint_every,
        step_fn=lambda s, batch: step_fn(s, params, partitioner.global_batch(batch)),
        loaders=[train_batches(data.encoded["train"], phase_config.batch_size, config.seed, partitioner,
                               "retrain.batch_size")],
        evaluate=lambda s: evaluate_split(s.delta, "validation")[0],
        best_payload=lambda s: s.delta,
    )
    result = run_phase(phase, state, checkpoints, os.path.join(workdir, "metrics.jsonl"), writer)
    best_delta, _ = checkpoints.restore_best(result.state.delta)
    checkpoints.close()
    test_metrics, _ = evaluate_split(best_delta, "test")
    trainable = structure.total_size
    results = {
        "phase": "retrain",
        "task": data.task.name,
        "structure": os.path.abspath(structure_path),
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
    return results
