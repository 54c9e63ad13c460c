"""`Retrainer`: re-training a chosen structure alone (no gates), the one copy used by the programs,
the benchmarks and library users.

    retrainer = Retrainer(model.apply, chosen, loss_fn, total_steps=1000)
    state = retrainer.init(jax.random.PRNGKey(0), extra=head_params)   # extra: optional
    for batch in batches:
        state, metrics = retrainer.step(state, params, batch)
    apply_fn = retrainer.apply_fn(state)                                 # model.apply with the deltas

`loss_fn(apply_fn, params, batch, dropout_key[, extra]) -> scalar` is the task loss, as for the
Searcher. The deltas start from the reference initialisations, and `extra` (a task head) trains
with them; both take clipped AdamW steps (torch-style global-norm clipping, no weight decay, the
learning rate decaying linearly to 0 over `total_steps`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from s3delta_jax.deltas.inject import init_delta, with_deltas
from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.search.step import adamw_with_linear_decay, clip_by_global_norm, inner_weights, split_inner_weights


class RetrainState(flax.struct.PyTreeNode):
    """step int32[]; delta: the chosen modules' weights; extra: the always-trained parameters (or None);
    opt_state: AdamW's state of (delta, extra); rng: the dropout key stream."""

    step: jax.Array
    delta: Any
    opt_state: Any
    rng: jax.Array
    extra: Any = None


@dataclasses.dataclass
class Retrainer:
    """Re-training of `candidates` on a frozen model (see the module docstring).

    Attributes:
      model_apply: the model's `apply`.
      candidates: the structure's modules.
      loss_fn: `(apply_fn, params, batch, dropout_key[, extra]) -> scalar`.
      total_steps: length of the learning-rate decay.
      learning_rate: AdamW's peak learning rate; clip_norm: the global gradient-norm clip.
      jit: how `step` is compiled, `jit(step_fn) -> compiled`; the programs pass one with the
        partitioner's shardings (default: `jax.jit`).
    """

    model_apply: Callable[..., Any]
    candidates: Sequence[Candidate]
    loss_fn: Callable[..., jax.Array]
    total_steps: int
    learning_rate: float = 3e-4
    clip_norm: float = 2.0
    jit: Callable[[Callable], Callable] = jax.jit

    def __post_init__(self):
        self.optimizer, self.schedule = adamw_with_linear_decay(self.learning_rate, self.total_steps)
        self.step = self.jit(self._step)

    def init(self, rng: jax.Array, extra: Any = None) -> RetrainState:
        """Fresh deltas (reference initialisations) and optimizer state; `extra` trains with them."""
        init_key, state_key = jax.random.split(rng)
        delta = init_delta(init_key, self.candidates)
        opt_state = self.optimizer.init(inner_weights(delta, extra))
        return RetrainState(jnp.zeros((), jnp.int32), delta, opt_state, state_key, extra)

    def apply_fn(self, delta: Any) -> Callable[..., Any]:
        """`model.apply` with the structure's deltas in place."""
        return with_deltas(self.model_apply, self.candidates, delta)

    def _step(self, state: RetrainState, params: Any, batch: Any) -> tuple[RetrainState, dict[str, jax.Array]]:
        """One clipped AdamW step on (delta, extra); metrics: loss and the gradient norm before clipping."""
        rng, dropout_key = jax.random.split(state.rng)
        has_extra = state.extra is not None

        def loss_of(weights):
            delta, extra = split_inner_weights(weights, has_extra)
            apply_fn = self.apply_fn(delta)
            if has_extra:
                return self.loss_fn(apply_fn, params, batch, dropout_key, extra)
            return self.loss_fn(apply_fn, params, batch, dropout_key)

        weights = inner_weights(state.delta, state.extra)
        loss, grads = jax.value_and_grad(loss_of)(weights)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.optimizer.update(clip_by_global_norm(grads, self.clip_norm), state.opt_state, weights)
        delta, extra = split_inner_weights(optax.apply_updates(weights, updates), has_extra)
        return RetrainState(state.step + 1, delta, opt_state, rng, extra), {"loss": loss, "grad_norm": grad_norm}
