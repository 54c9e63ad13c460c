"""`Searcher`: the S3Delta search on any Flax model in a few calls (the public face of the package).

    searcher = Searcher(model.apply, candidates, loss_fn, budget=budget_params(1e-3, num_backbone_params),
                        total_steps=1000)
    state = searcher.init(jax.random.PRNGKey(0))
    for batch_delta, batch_alpha in zip(d_delta, d_alpha):
        state, metrics = searcher.step(state, params, batch_delta, batch_alpha)
    chosen = searcher.select(state.alpha)      # the candidates of the final structure

`loss_fn(apply_fn, params, batch, dropout_key) -> scalar` is the user's task loss, written against
`apply_fn`, which has the signature of `model.apply` and carries the gated delta modules.

Parameters that are always trained and outside the budget (a task head on an encoder) go into
`searcher.init(key, extra=head_params)`; the loss then takes them last,
`loss_fn(apply_fn, params, batch, dropout_key, extra)`, and they train with delta (same optimizer,
and part of the virtual step), never gated, never selected. `state.extra` holds them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from s3delta_jax.deltas.inject import init_delta, with_deltas
from s3delta_jax.deltas.scan import ScannedLayers
from s3delta_jax.deltas.spaces import Candidate, candidates_from_mask
from s3delta_jax.search import gates, select as select_lib
from s3delta_jax.search.step import (
    LossFn,
    SearchSettings,
    SearchState,
    adamw_with_linear_decay,
    expected_probabilities,
    init_search_state,
    make_search_step,
    stack_state,
    unstack_state,
)


@dataclasses.dataclass
class Searcher:
    """The search over `candidates` of a model at a parameter `budget` (see the module docstring).

    Attributes:
      model_apply: the model's `apply`.
      candidates: the expanded search space (`expand(space, positions).candidates`).
      loss_fn: `(apply_fn, params, batch, dropout_key) -> scalar`, with `extra` as a fifth argument
        when the state has one.
      budget: B in parameters (`budget_params` turns a ratio into a count).
      total_steps: length of the linear learning-rate decays.
      settings: estimator, virtual step, tau, gate mode, clipping (defaults: the reference).
      learning_rate / alpha_learning_rate: AdamW learning rates of delta and alpha.
      jit: how `step` is compiled, `jit(step_fn) -> compiled` for
        `step_fn(state, params, batch_delta, batch_alpha)`; the programs pass one with the
        partitioner's shardings (default: `jax.jit`).
      scans: the layers `model_apply` runs under nn.scan (e.g. `t5.scanned_layers(config)` of a T5
        with `scan_layers=True`), so that a deep model compiles one layer body; `params` must then
        be in the stacked layout (`deltas.scan.stack_layers`), and the states of `init` and `step`
        hold delta and Adam's moments stacked the same way: `unscanned(state)` gives the candidates'
        own paths (for checkpoints, evaluation and inspection), `scanned` takes it back. Candidates
        and structures keep the unscanned paths; every scanned layer must hold the same candidates.
    """

    model_apply: Callable[..., Any]
    candidates: Sequence[Candidate]
    loss_fn: LossFn
    budget: float
    total_steps: int
    settings: SearchSettings = dataclasses.field(default_factory=SearchSettings)
    learning_rate: float = 3e-4
    alpha_learning_rate: float = 0.1
    jit: Callable[[Callable], Callable] = jax.jit
    scans: Sequence[ScannedLayers] = ()

    def __post_init__(self):
        self.sizes = np.array([c.size for c in self.candidates], dtype=np.int64)
        gates.validate_budget(self.sizes, self.budget)
        self.delta_optimizer, delta_schedule = adamw_with_linear_decay(self.learning_rate, self.total_steps)
        self.alpha_optimizer, _ = adamw_with_linear_decay(self.alpha_learning_rate, self.total_steps)
        self.step = self.jit(make_search_step(
            self.loss_fn, self.model_apply, self.candidates, self.sizes, self.budget, self.settings,
            self.delta_optimizer, self.alpha_optimizer, delta_schedule, self.scans,
        ))
        self._stack = jax.jit(functools.partial(stack_state, scans=self.scans))
        self._unstack = jax.jit(functools.partial(unstack_state, scans=self.scans))

    def init(self, rng: jax.Array, extra: Any = None) -> SearchState:
        """Fresh delta weights (reference initialisations), alpha = 0, optimizer states; `extra`: the
        always-trained parameters, if any (see the module docstring)."""
        init_key, state_key = jax.random.split(rng)
        delta = init_delta(init_key, self.candidates)
        return self.scanned(init_search_state(delta, len(self.candidates), self.delta_optimizer, self.alpha_optimizer,
                                              state_key, extra=extra))

    def scanned(self, state: SearchState) -> SearchState:
        """A state in the unscanned layout (a checkpoint's) in the layout `step` takes: with `scans`, its
        delta and Adam's moments stacked per scan; without, `state` itself."""
        return self._stack(state) if self.scans else state

    def unscanned(self, state: SearchState) -> SearchState:
        """The inverse of `scanned`: every delta leaf at its candidate's own path."""
        return self._unstack(state) if self.scans else state

    def probabilities(self, alpha: jax.Array) -> jax.Array:
        """p f32[N] of alpha f32[N] (`state.alpha`): the gate probabilities at the budget."""
        return expected_probabilities(alpha, self.sizes, self.budget, self.settings)

    def apply_with_expected_gates(self, delta: Any, alpha: jax.Array) -> Callable[..., Any]:
        """`model.apply` with every candidate gated by p (the search's evaluation, z = p); `delta` in the
        unscanned layout (`unscanned(state).delta`)."""
        return with_deltas(self.model_apply, self.candidates, delta, self.probabilities(alpha), self.scans)

    def select(self, alpha: jax.Array, strategy: str = "greedy", seed: int | None = None) -> list[Candidate]:
        """The final structure from `state.alpha`: candidates chosen from p within the budget
        ('greedy', 'knapsack', 'random')."""
        p = np.asarray(self.probabilities(alpha))
        mask = select_lib.select(strategy, p, self.sizes, self.budget, seed=seed)
        return candidates_from_mask(self.candidates, mask)
