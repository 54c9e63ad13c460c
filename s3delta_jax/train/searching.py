"""`run_search(config, workdir)`: the whole search phase behind run_search.py, on any Backbone.

The gates are trained on the D_alpha half of the training split and the deltas (and a task head,
if the backbone's task has one) on the D_delta half; every `eval_every` steps the model with z = p
is evaluated on the validation split, and the structure is selected from the gates of the best
evaluation. Writes into `workdir`: config.json, metrics.jsonl, checkpoints/, structure.json,
gates.tsv, heatmap.png and results.json; with `config.retrain_after_search` it continues into
`workdir/retrain` (see retraining.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from s3delta_jax.deltas.budget import budget_params
from s3delta_jax.deltas.spaces import candidates_from_mask, expand
from s3delta_jax.deltas.structure import save_structure, structure_from_candidates
from s3delta_jax.models.registry import load_backbone
from s3delta_jax.search import select
from s3delta_jax.search.searcher import Searcher
from s3delta_jax.search.step import SearchSettings
from s3delta_jax.train import outputs
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.config_check import validate_config
from s3delta_jax.train.distributed import start_processes
from s3delta_jax.train.evaluate import Evaluator
from s3delta_jax.train.loop import Phase, phase_steps, run_phase
from s3delta_jax.train.prepare import check_run, load_task_data, place_backbone, record_run, train_batches
from s3delta_jax.train.summary import summary_lines, write_summary
from s3delta_jax.train.system import peak_memory_bytes

EXTRA_KEY_SALT = 1  # the head's initialisation key: fold_in(PRNGKey(seed), salt)


def search_settings(search_config: ml_collections.ConfigDict) -> SearchSettings:
    return SearchSettings(
        estimator=search_config.estimator, virtual_step=search_config.virtual_step, tau=search_config.tau,
        gate_mode=search_config.gate_mode, l0_weight=search_config.l0_weight, clip_norm=search_config.clip_norm,
        fd_dropout=search_config.fd_dropout, hessian_dropout=search_config.hessian_dropout,
        delta_gradient=search_config.delta_gradient,
        second_order_every=search_config.second_order_every,
    )


def run_search(config: ml_collections.ConfigDict, workdir: str, allow_config_change: Sequence[str] = ()) -> str:
    """Runs (or resumes) the search; returns the path of the structure.json it wrote.

    `allow_config_change`: fields that may differ from the config the workdir's run started with
    (train/workdir.py); any other difference is refused before anything is written.
    """
    started = time.monotonic()
    validate_config(config)
    start_processes(config.distributed)  # before any JAX call, which tracing the backbone makes
    settings = search_settings(config.search)
    backbone = load_backbone(config.model)
    fingerprint = backbone.fingerprint()
    check_run(config, workdir, fingerprint, allow_config_change)
    data = load_task_data(config.data, backbone, config.seed, search_data=config.search.data_split)
    head = backbone.task_head(data.task, config.eval.method, config.eval.max_decode_length)
    expansion = expand(backbone.space(config.search.space), backbone.positions())
    candidates, sizes = expansion.candidates, expansion.sizes
    budget = budget_params(config.search.budget, backbone.num_params)
    model = backbone.search_model(config.search.scan_layers, config.search.remat)
    placed = place_backbone(backbone, config.seed, config.mesh, model)
    partitioner, params = placed.partitioner, placed.params
    writer = record_run(config, workdir, fingerprint, allow_config_change)
    setup_seconds = time.monotonic() - started

    phase_config = config.search
    steps, full_steps = phase_steps(len(data.encoded["delta"]), phase_config)
    searcher = Searcher(
        model.module.apply, candidates, head.loss, budget=budget, total_steps=full_steps, settings=settings,
        learning_rate=phase_config.learning_rate, alpha_learning_rate=phase_config.alpha_learning_rate,
        jit=partitioner.step_jit(num_batches=2), scans=model.scans,
    )
    rng = jax.random.PRNGKey(config.seed)
    extra = head.init_extra(jax.random.fold_in(rng, EXTRA_KEY_SALT))
    state = partitioner.replicate(searcher.init(rng, extra=extra))

    evaluator = Evaluator(
        data.task, head, phase_config.eval_batch_size,
        apply_for=lambda variables: searcher.apply_with_expected_gates(variables["delta"], variables["alpha"]),
        partitioner=partitioner,
    )

    def evaluate_split(variables, split):
        return evaluator(params, variables, data.examples[split], data.encoded[split])

    def variables_of(state):
        state = searcher.unscanned(state)
        return {"delta": state.delta, "alpha": state.alpha, "extra": state.extra}

    loaders = [
        train_batches(data.encoded[split], config, "search", 2 * config.seed + i, partitioner)
        for i, split in enumerate(("delta", "alpha"))
    ]
    checkpoints = RunCheckpoints(workdir)
    phase = Phase(
        name="search", total_steps=steps, eval_every=phase_config.eval_every,
        checkpoint_every=phase_config.checkpoint_every,
        step_fn=lambda s, b_delta, b_alpha: searcher.step(
            s, params, partitioner.global_batch(b_delta), partitioner.global_batch(b_alpha)),
        loaders=loaders,
        evaluate=lambda s: evaluate_split(variables_of(s), "validation")[0],
        best_payload=variables_of,
        to_checkpoint=searcher.unscanned,
        from_checkpoint=searcher.scanned,
    )
    result = run_phase(phase, state, checkpoints, os.path.join(workdir, "metrics.jsonl"), writer)

    # The structure comes from alpha at the best validation checkpoint (as the reference selects it).
    best, _ = checkpoints.restore_best(variables_of(result.state))
    checkpoints.close()
    alpha = np.asarray(best["alpha"])
    p = np.asarray(searcher.probabilities(best["alpha"]))
    mask = select.select(config.search.selection, p, sizes, budget, seed=config.seed)
    chosen = candidates_from_mask(candidates, mask)
    test_metrics, _ = evaluate_split(best, "test")

    structure_path = os.path.join(workdir, "structure.json")
    if writer:
        structure = structure_from_candidates(
            chosen, backbone=backbone.name, backbone_params=backbone.num_params,
            backbone_fingerprint=fingerprint, budget=config.search.budget,
            budget_params=budget, search_space=config.search.space, all_candidates=candidates, alpha=alpha, p=p,
        )
        save_structure(structure_path, structure)
        outputs.write_gates_tsv(os.path.join(workdir, "gates.tsv"), candidates, alpha, p, mask)
        outputs.write_heatmap(os.path.join(workdir, "heatmap.png"), candidates, p,
                              f"{data.task.name}: p of {len(candidates)} candidates, budget {budget} params",
                              chosen=mask)
        trainable = int(sum(c.size for c in chosen))
        outputs.write_json(os.path.join(workdir, "results.json"), {
            "phase": "search",
            "task": data.task.name,
            "backbone": fingerprint,
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
        paths = [os.path.join(workdir, name) for name in ("structure.json", "gates.tsv", "heatmap.png", "results.json")]
        write_summary(summary_lines(result, paths, modules=len(chosen), trainable_params=trainable,
                                                    backbone_params=backbone.num_params))
    return structure_path
