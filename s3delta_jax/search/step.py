"""One S3Delta search step as a single pure function (jit it, or pjit it with shardings).

In order (reference section 4, design section 4):
  1. solve zeta for the budget and draw one Binary Concrete sample z-hat(alpha), shared by the
     four loss terms of the hypergradient;
  2. hypergradient of the D_alpha loss with respect to alpha (the chosen estimator);
  3. clip it to the global norm, one alpha optimizer step;
  4. a fresh sample with zeta re-solved for the updated alpha; the D_delta loss gradient with
     respect to delta, clipped, one delta optimizer step. (With `delta_gradient='reuse'` the
     second-order estimators' virtual-step gradient is used instead: one pass fewer.)
The backbone `params` is only read: nothing differentiates with respect to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from s3delta_jax.deltas.inject import with_deltas
from s3delta_jax.deltas.scan import ScannedLayers, stack_layers, unstack_layers
from s3delta_jax.search import gates, hypergrad

# Hard-concrete stretch (low, high) of the 'l0' ablation (Louizos et al. 2018); the reference's own
# defaults (0, 1) make its L0 penalty divide by zero.
L0_STRETCH = (-0.1, 1.1)
DELTA_GRADIENTS = ("resample", "reuse")

# loss_fn(apply_fn, params, batch, dropout_key[, extra]) -> scalar, where apply_fn has the signature of
# the user's `model.apply` and already carries the gated delta modules.
LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Static settings of the search step (hashable, so it can be closed over under jit).

    Attributes:
      estimator: 'second_order_fd' (reference), 'second_order_exact' or 'first_order'.
      virtual_step: 'adam' (reference: a full step of the live delta optimizer) or 'sgd' (paper).
      tau: temperature of the shifted sigmoid (the reference's --beta).
      gate_mode: 'global' (reference), 'local' or 'l0' (paper ablations).
      l0_weight: lambda0, the weight of the L0 penalty (expected count of nonzero gates) in 'l0' mode.
      clip_norm: global-norm clipping of the alpha and the delta gradients, separately.
      fd_dropout: 'independent' (reference) or 'shared' dropout masks in the two finite-difference
        passes of 'second_order_fd' (see hypergrad).
      hessian_dropout: 'independent' (reference: the Hessian term of 'second_order_exact' under its own
        dropout mask) or 'shared' ('second_order_exact' only: under the virtual step's gradient pass's
        mask, both from one jax.linearize, which saves that term a forward and backward pass).
      delta_gradient: 'resample' (reference: the delta update's gradient comes from its own pass, under
        a fresh sample of the updated alpha) or 'reuse' (second-order estimators only: the virtual
        step's gradient, taken on the same D_delta batch under the pre-update sample, saves one of the
        step's forward+backward passes).
      second_order_every: k >= 1; second-order estimators only: the second-order hypergradient on steps
        0, k, 2k, ... and the first-order one (one pass instead of four) on the steps between; 1 (the
        reference): every step. With k > 1 the delta gradient is resampled (there is no virtual step
        to reuse on the first-order steps).
    """

    estimator: str = "second_order_fd"
    virtual_step: str = "adam"
    tau: float = 1.0
    gate_mode: str = "global"
    l0_weight: float = 0.0
    clip_norm: float = 2.0
    fd_dropout: str = "independent"
    hessian_dropout: str = "independent"
    delta_gradient: str = "resample"
    second_order_every: int = 1

    def __post_init__(self):
        hypergrad.check_estimator(self.estimator)
        hypergrad.check_fd_dropout(self.fd_dropout)
        hypergrad.check_hessian_dropout(self.hessian_dropout, self.estimator)
        if self.delta_gradient not in DELTA_GRADIENTS:
            raise ValueError(f"unknown delta_gradient {self.delta_gradient!r}: use one of {', '.join(DELTA_GRADIENTS)}")
        if self.delta_gradient == "reuse" and self.estimator == "first_order":
            raise ValueError("delta_gradient 'reuse' needs a second-order estimator (first_order takes no gradient "
                             "on the D_delta batch to reuse): use delta_gradient 'resample'")
        if self.second_order_every < 1:
            raise ValueError(f"second_order_every must be at least 1, got {self.second_order_every}")
        if self.second_order_every > 1 and (self.estimator == "first_order" or self.delta_gradient == "reuse"):
            raise ValueError("second_order_every > 1 alternates a second-order estimator with first order and "
                             "resamples the delta gradient: use a second-order estimator and delta_gradient "
                             "'resample', or second_order_every 1")
        if self.virtual_step not in hypergrad.VIRTUAL_STEPS:
            raise ValueError(
                f"unknown virtual step {self.virtual_step!r}: use one of {', '.join(hypergrad.VIRTUAL_STEPS)}"
            )
        gates.check_gate_mode(self.gate_mode)
        if self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")


class SearchState(flax.struct.PyTreeNode):
    """Everything the search step updates. `alpha` is f32[N], one scalar per candidate.

    `extra` (None, or any pytree) holds parameters that are always trained, never gated and outside the
    budget (a task head). With it, the inner problem's variables are delta and extra together: the
    virtual step, the hypergradient's direction v and the delta optimizer (`delta_opt_state`) cover
    both, as DARTS treats every weight it trains.
    """

    step: jax.Array
    delta: Any
    alpha: jax.Array
    delta_opt_state: Any
    alpha_opt_state: Any
    rng: jax.Array
    extra: Any = None

    @property
    def weights(self) -> Any:
        """The inner problem's variables: delta, or {"delta": delta, "extra": extra} when extra is set."""
        return inner_weights(self.delta, self.extra)


def inner_weights(delta: Any, extra: Any) -> Any:
    """delta alone, or {"delta": delta, "extra": extra} (the pytree the delta optimizer updates)."""
    return delta if extra is None else {"delta": delta, "extra": extra}


def split_inner_weights(weights: Any, has_extra: bool) -> tuple[Any, Any]:
    """The inverse of `inner_weights`: (delta, extra or None)."""
    return (weights["delta"], weights["extra"]) if has_extra else (weights, None)


def adamw_with_linear_decay(learning_rate: float, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW(betas 0.9/0.999, eps 1e-8, weight decay 0), lr decaying linearly to 0 (reference section 4)."""
    schedule = optax.linear_schedule(learning_rate, 0.0, max(int(total_steps), 1))
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0), schedule


def init_search_state(
    delta: Any,
    num_candidates: int,
    delta_optimizer: optax.GradientTransformation,
    alpha_optimizer: optax.GradientTransformation,
    rng: jax.Array,
    extra: Any = None,
) -> SearchState:
    """alpha starts at 0 for every candidate (reference section 3); `extra`: see SearchState."""
    alpha = jnp.zeros((num_candidates,), jnp.float32)
    return SearchState(
        step=jnp.zeros((), jnp.int32),
        delta=delta,
        alpha=alpha,
        delta_opt_state=delta_optimizer.init(inner_weights(delta, extra)),
        alpha_opt_state=alpha_optimizer.init(alpha),
        rng=rng,
        extra=extra,
    )


def clip_by_global_norm(grads: Any, max_norm: float) -> Any:
    """Scales `grads` so that their global L2 norm is at most `max_norm` (torch's clip_grad_norm_)."""
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads)


def make_search_step(
    loss_fn: LossFn,
    model_apply: Callable[..., Any],
    candidates: Sequence[Any],
    sizes: jax.Array,
    budget: float,
    settings: SearchSettings,
    delta_optimizer: optax.GradientTransformation,
    alpha_optimizer: optax.GradientTransformation,
    delta_lr_schedule: optax.Schedule,
    scans: Sequence[ScannedLayers] = (),
) -> Callable[[SearchState, Any, Any, Any], tuple[SearchState, dict[str, jax.Array]]]:
    """Builds `step(state, params, batch_delta, batch_alpha) -> (state, metrics)`.

    Args:
      loss_fn: `(apply_fn, params, batch, dropout_key) -> scalar`, the task loss of the user's model;
        when the state carries `extra`, `(apply_fn, params, batch, dropout_key, extra) -> scalar`.
      model_apply: the model's `apply` (e.g. `model.apply`).
      candidates: the expanded search space; `candidates[i].index == i`.
      sizes: f32[N] parameter counts |delta_i|.
      budget: B, the expected number of trainable parameters to hold.
      settings: see SearchSettings.
      delta_optimizer / alpha_optimizer: optax optimizers (clipping is applied here, not in them).
      delta_lr_schedule: the delta learning rate by step; xi of the hypergradient.
      scans: the layers `model_apply` runs under nn.scan (`params` in their stacked layout; see
        `deltas.inject.with_deltas`); the state's delta and Adam's moments are then stacked too
        (`stack_state`), so the optimizer, clipping and the virtual step compile one set of
        operations per slot at any depth.
    """
    sizes = jnp.asarray(sizes, jnp.float32)

    def task_loss(params, weights, has_extra, z, batch, key):
        delta, extra = split_inner_weights(weights, has_extra)
        apply_fn = with_deltas(model_apply, candidates, delta, z, scans, stacked_delta=bool(scans))
        return loss_fn(apply_fn, params, batch, key, extra) if has_extra else loss_fn(apply_fn, params, batch, key)

    def concrete_sampler(alpha, key):
        """One Binary Concrete sample z-hat(alpha) f32[N]: u and zeta are fixed by `key` and the
        current alpha, so the four hypergradient terms share one sample (and one zeta solve) while
        z-hat stays differentiable in alpha."""
        zeta = None if settings.gate_mode == "l0" else gates.solve_zeta(alpha, sizes, budget, settings.tau)
        u = gates.sample_uniform(key, sizes.shape[0])

        def sample(a):
            p = gates.gate_probabilities(a, sizes, budget, settings.tau, settings.gate_mode, zeta=zeta)
            z_hat = gates.concrete_from_uniform(u, p)
            if settings.gate_mode == "l0":
                return gates.stretch_gates(z_hat, p, *L0_STRETCH)
            return z_hat

        return sample

    def step(state: SearchState, params: Any, batch_delta: Any, batch_alpha: Any):
        rng, sample_key, resample_key, delta_dropout_key, *hyper_keys = jax.random.split(state.rng, 8)
        xi = delta_lr_schedule(state.step)

        sample = concrete_sampler(state.alpha, sample_key)
        has_extra = state.extra is not None

        def objective(weights, alpha, batch, key):
            return task_loss(params, weights, has_extra, sample(alpha), batch, key)

        virtual_step = hypergrad.make_virtual_step(
            settings.virtual_step, delta_optimizer, state.delta_opt_state, xi
        )

        def alpha_hypergradient(estimator):
            return hypergrad.hypergradient(
                objective,
                state.weights,
                state.alpha,
                batch_delta,
                batch_alpha,
                jnp.stack(hyper_keys),
                estimator=estimator,
                virtual_step=virtual_step,
                xi=xi,
                fd_dropout=settings.fd_dropout,
                # second_order_every's first-order steps have no Hessian term
                hessian_dropout=settings.hessian_dropout if estimator == "second_order_exact" else "independent",
            )

        if settings.second_order_every == 1:
            grad_alpha, aux = alpha_hypergradient(settings.estimator)
        else:
            # Only the taken branch runs; both return (grad_alpha, {"loss_alpha"}).
            grad_alpha, aux = jax.lax.cond(
                state.step % settings.second_order_every == 0,
                lambda: _without_delta_gradient(alpha_hypergradient(settings.estimator)),
                lambda: alpha_hypergradient("first_order"),
            )
        if settings.gate_mode == "l0":
            grad_alpha = grad_alpha + settings.l0_weight * jax.grad(
                lambda a: gates.l0_penalty(a, None, settings.tau, low=L0_STRETCH[0], high=L0_STRETCH[1])
            )(state.alpha)
        grad_alpha = clip_by_global_norm(grad_alpha, settings.clip_norm)
        alpha_updates, alpha_opt_state = alpha_optimizer.update(grad_alpha, state.alpha_opt_state, state.alpha)
        alpha = optax.apply_updates(state.alpha, alpha_updates)

        if settings.delta_gradient == "reuse":
            loss_delta, grad_delta = aux["loss_delta"], aux["grad_delta"]
        else:
            z = concrete_sampler(alpha, resample_key)(alpha)
            loss_delta, grad_delta = jax.value_and_grad(task_loss, argnums=1)(
                params, state.weights, has_extra, z, batch_delta, delta_dropout_key
            )
        grad_delta = clip_by_global_norm(grad_delta, settings.clip_norm)
        delta_updates, delta_opt_state = delta_optimizer.update(grad_delta, state.delta_opt_state, state.weights)
        delta, extra = split_inner_weights(optax.apply_updates(state.weights, delta_updates), has_extra)

        new_state = SearchState(
            step=state.step + 1,
            delta=delta,
            alpha=alpha,
            delta_opt_state=delta_opt_state,
            alpha_opt_state=alpha_opt_state,
            rng=rng,
            extra=extra,
        )
        metrics = {
            "loss_delta": loss_delta,
            "loss_alpha": aux["loss_alpha"],
            "grad_norm_alpha": optax.tree.norm(grad_alpha),
            "grad_norm_delta": optax.tree.norm(grad_delta),
            "learning_rate": xi,
        }
        return new_state, metrics

    return step


def stack_state(state: SearchState, scans: Sequence[ScannedLayers]) -> SearchState:
    """`state` (delta in the unscanned layout, as checkpoints hold it) in the layout a scanned search
    step takes: its delta and Adam's moments stacked per scan (`deltas.scan.stack_layers`)."""
    return _relayout(state, lambda delta: stack_layers(delta, scans, "delta pytree"))


def unstack_state(state: SearchState, scans: Sequence[ScannedLayers]) -> SearchState:
    """The inverse of `stack_state`: the state with the unscanned paths of the candidates."""
    return _relayout(state, lambda delta: unstack_layers(delta, scans))


def _relayout(state: SearchState, convert: Callable[[Any], Any]) -> SearchState:
    """`state` with `convert` applied to its delta and to each part of the delta optimizer's state that
    is shaped like the inner weights (Adam's moments); `extra` and counters are left as they are."""
    has_extra = state.extra is not None
    weights = jax.tree.structure(state.weights)

    def convert_weights(tree):
        delta, extra = split_inner_weights(tree, has_extra)
        return inner_weights(convert(delta), extra)

    def is_weights(node):
        return jax.tree.structure(node) == weights

    opt_state = jax.tree.map(lambda node: convert_weights(node) if is_weights(node) else node,
                             state.delta_opt_state, is_leaf=is_weights)
    return state.replace(delta=convert(state.delta), delta_opt_state=opt_state)


def _without_delta_gradient(hypergradient: tuple[jax.Array, dict[str, jax.Array]]):
    """(grad_alpha, {"loss_alpha"}) of a second-order estimator's (grad_alpha, aux): first order's outputs."""
    grad_alpha, aux = hypergradient
    return grad_alpha, {"loss_alpha": aux["loss_alpha"]}


def expected_probabilities(alpha: jax.Array, sizes: jax.Array, budget: float, settings: SearchSettings) -> jax.Array:
    """p for evaluation during search and for the final selection (z = p, reference section 3)."""
    return gates.gate_probabilities(alpha, jnp.asarray(sizes, jnp.float32), budget, settings.tau, settings.gate_mode)
