"""`run_search(config, workdir)`: the whole search phase behind run_search.py (reference section 4-5).

Writes into `workdir`: config.json, metrics.jsonl, checkpoints/, structure.json, gates.tsv,
heatmap.png and results.json; with `config.retrain_after_search` it continues into
`workdir/retrain` (see retrain_run.py).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from s3delta_jax.deltas.budget import budget_params
from s3delta_jax.deltas.inject import init_delta, with_deltas
from s3delta_jax.deltas.spaces import candidates_from_mask, expand
from s3delta_jax.deltas.structure import save_structure, structure_from_candidates
from s3delta_jax.search import gates, select, step as search_step
from s3delta_jax.train import outputs
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.evaluate import Evaluator
from s3delta_jax.train.loop import Phase, phase_steps, run_phase
from s3delta_jax.train.setup import (
    backbone_positions, load_backbone, load_task_data, seq2seq_loss, start_run, train_batches,
)
from s3delta_jax.train.system import peak_memory_bytes


def search_settings(search_config: ml_collections.ConfigDict) -> search_step.SearchSettings:
    return search_step.SearchSettings(
        estimator=search_config.estimator, virtual_step=search_config.virtual_step, tau=search_config.tau,
        gate_mode=search_config.gate_mode, l0_weight=search_config.l0_weight, clip_norm=search_config.clip_norm,
        fd_dropout=search_config.fd_dropout, delta_gradient=search_config.delta_gradient,
    )


def run_search(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Runs (or resumes) the search; returns the path of the structure.json it wrote."""
    started = time.monotonic()
    writer = start_run(config, workdir)
    settings = search_settings(config.search)  # validates names before any heavy work

    backbone = load_backbone(config.model, config.seed, config.mesh)
    partitioner = backbone.partitioner
    data = load_task_data(config.data, backbone.tokenizer, config.seed, with_search_halves=True)
    expansion = expand(config.search.space, backbone_positions(backbone))
    candidates = expansion.candidates
    sizes = expansion.sizes
    budget = budget_params(config.search.budget, backbone.num_params)
    gates.validate_budget(sizes, budget)
    setup_seconds = time.monotonic() - started

    phase_config = config.search
    steps, full_steps = phase_steps(len(data.encoded["delta"]), phase_config)
    delta_optimizer, delta_schedule = search_step.adamw_with_linear_decay(phase_config.learning_rate, full_steps)
    alpha_optimizer, _ = search_step.adamw_with_linear_decay(phase_config.alpha_learning_rate, full_steps)
    rng = jax.random.PRNGKey(config.seed)
    init_key, state_key = jax.random.split(rng)
    delta = init_delta(init_key, candidates)
    state = partitioner.replicate(
        search_step.init_search_state(delta, len(candidates), delta_optimizer, alpha_optimizer, state_key))

    step_fn = partitioner.jit(
        search_step.make_search_step(
            seq2seq_loss(backbone.config), backbone.model.apply, candidates, sizes, budget, settings,
            delta_optimizer, alpha_optimizer, delta_schedule,
        ),
        in_shardings=(partitioner.replicated, partitioner.param_shardings, partitioner.batch, partitioner.batch),
        out_shardings=partitioner.replicated, donate_argnums=(0,),
    )
    params = backbone.params

    def probabilities(alpha):
        return search_step.expected_probabilities(alpha, sizes, budget, settings)

    evaluator = Evaluator(
        data.task, backbone.tokenizer, backbone.config, config.eval.method, phase_config.eval_batch_size,
        config.eval.max_decode_length,
        apply_for=lambda variables: with_deltas(backbone.model.apply, candidates, variables["delta"],
                                                probabilities(variables["alpha"])),
        partitioner=partitioner,
    )

    def evaluate_split(delta, alpha, split):
        return evaluator(params, {"delta": delta, "alpha": alpha}, data.examples[split], data.encoded[split])

    loaders = [
        train_batches(data.encoded[split], phase_config.batch_size, 2 * config.seed + i, partitioner,
                      "search.batch_size")
        for i, split in enumerate(("delta", "alpha"))
    ]
    checkpoints = RunCheckpoints(workdir)
    phase = Phase(
        name="search", total_steps=steps, eval_every=phase_config.eval_every,
        checkpoint_every=phase_config.checkpoint_every,
        step_fn=lambda s, b_delta, b_alpha: step_fn(
            s, params, partitioner.global_batch(b_delta), partitioner.global_batch(b_alpha)),
        loaders=loaders,
        evaluate=lambda s: evaluate_split(s.delta, s.alpha, "validation")[0],
        best_payload=lambda s: {"delta": s.delta, "alpha": s.alpha},
    )
    result = run_phase(phase, state, checkpoints, os.path.join(workdir, "metrics.jsonl"), writer)

    # The structure comes from alpha at the best validation checkpoint (reference section 5).
    best, _ = checkpoints.restore_best({"delta": result.state.delta, "alpha": result.state.alpha})
    checkpoints.close()
    alpha = np.asarray(best["alpha"])
    p = np.asarray(probabilities(best["alpha"]))
    mask = select.select(config.search.selection, p, sizes, budget, seed=config.seed)
    chosen = candidates_from_mask(candidates, mask)
    test_metrics, _ = evaluate_split(best["delta"], best["alpha"], "test")

    structure_path = os.path.join(workdir, "structure.json")
    if writer:
        structure = structure_from_candidates(
            chosen, backbone=backbone.name, backbone_params=backbone.num_params, budget=config.search.budget,
            budget_params=budget, search_space=config.search.space, all_candidates=candidates, alpha=alpha, p=p,
        )
        save_structure(structure_path, structure)
        outputs.write_gates_tsv(os.path.join(workdir, "gates.tsv"), candidates, alpha, p, mask)
        outputs.write_heatmap(os.path.join(workdir, "heatmap.png"), candidates, p,
                              f"{data.task.name}: p of {len(candidates)} candidates, budget {budget} params")
        trainable = int(sum(c.size for c in chosen))
        outputs.write_json(os.path.join(workdir, "results.json"), {
            "phase": "search",
            "task": data.task.name,
            "best_step": result.best_step,
            "resumed_from_step": result.start_step,
            "val": result.best_metrics,
            "test_soft_gates": test_metrics,  # z = p on the test split: logged only, as in the reference
            "structure": {"modules": len(chosen), "trainable_params": trainable,
                          "ratio_to_backbone": trainable / backbone.num_params, "budget_params": budget},
            "search_space": {"candidates": len(candidates), "params": int(sizes.sum())},
            "backbone_params": backbone.num_params,
            "devices": partitioner.describe(),
            "wall_seconds": {"setup": setup_seconds, "search": result.seconds,
                             "total": time.monotonic() - started},
            "peak_memory_bytes": peak_memory_bytes(),
        })
    return structure_path
