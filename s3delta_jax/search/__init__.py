"""s3delta_jax.search: S3Delta structure search for any Flax model.

    import s3delta_jax.search as s3

    positions = s3.discover_positions(model, example_x)          # shapes only, no weights
    space = s3.expand([[s3.Rule(r"Dense_\\d+$", ("linear",), "lora", {"r": 1}),
                        s3.Rule(r"LayerNorm_\\d+$", ("norm",), "lnfit")]], positions)
    searcher = s3.Searcher(model.apply, space.candidates, loss_fn,
                           budget=s3.budget_params(0.3, space.total_size), total_steps=500)
    state = searcher.init(jax.random.PRNGKey(0))
    for batch_delta, batch_alpha in batches:
        state, metrics = searcher.step(state, params, batch_delta, batch_alpha)
    chosen = searcher.select(state.alpha)                         # list of Candidates

`loss_fn(apply_fn, params, batch, dropout_key)` computes the task loss with `apply_fn`, which has the
signature of `model.apply` and already carries the gated deltas. Parameters that must always train
outside the budget (a task head) go in `searcher.init(key, extra=head)` and reach the loss as a fifth
argument, `loss_fn(apply_fn, params, batch, dropout_key, extra)`. Re-train the chosen structure with
`s3.with_deltas(model.apply, chosen, s3.init_delta(key, chosen))` (no gates) and any optimizer.

A model that runs its repeated layers under `nn.scan` (stacked params) is searched with
`s3.Searcher(..., scans=[s3.ScannedLayers(...)])` and `params = s3.stack_layers(params, scans)`;
its states hold delta stacked the same way (`searcher.unscanned(state)` gives the candidates' own
paths, `searcher.scanned` takes them back); candidates and structures keep the unscanned paths
(T5: `t5.scanned_layers(config)`).
"""

from s3delta_jax.deltas import (
    Candidate,
    Position,
    Rule,
    ScannedLayers,
    budget_params,
    candidates_from_mask,
    discover_positions,
    expand,
    init_delta,
    load_structure,
    register_norm,
    save_structure,
    stack_layers,
    structure_from_candidates,
    with_deltas,
)
from s3delta_jax.search.gates import BudgetError, gate_probabilities, sample_concrete, solve_zeta
from s3delta_jax.search.searcher import Searcher
from s3delta_jax.search.step import SearchSettings, SearchState, make_search_step

__all__ = [
    "BudgetError", "Candidate", "Position", "Rule", "ScannedLayers", "SearchSettings", "SearchState", "Searcher", "budget_params",
    "candidates_from_mask", "discover_positions", "expand", "gate_probabilities", "init_delta", "load_structure",
    "make_search_step", "register_norm", "sample_concrete", "save_structure", "solve_zeta", "stack_layers",
    "structure_from_candidates", "with_deltas",
]
