"""Where a search step's time goes: each piece of the step jitted alone, all timed in turns.

The pieces are the backbone passes the estimators are made of (s3delta_jax/search/hypergrad.py),
on one batch, with every candidate gated by one fixed Binary Concrete sample as inside a step:

  search_forward          the gated loss alone
  grad_delta              d loss / d delta
  grad_alpha              d loss / d alpha (through the gates)
  grad_delta_and_alpha    both in one backward pass
  hvp_jvp                 second_order_exact's Hessian term: jvp over delta of grad_alpha
  hvp_grad_of_jvp         the same term the other way round: grad over alpha of the jvp over delta
  hvp_fd_two_passes       second_order_fd's Hessian term: grad_alpha at delta + eps v and delta - eps v
  hvp_fd_vmapped          the same two passes batched with jax.vmap (same keys, same math)
  grad_delta_and_hvp_linearized
                          hessian_dropout='shared': grad_delta and the exact Hessian term from one
                          jax.linearize (its primal pass, then its tangent pass)
  retrain_forward/_grad   the re-training structure's loss and d loss / d delta

The Hessian terms are the library's own `hypergrad.mixed_hvp_exact` and
`hypergrad.mixed_hvp_finite_difference`; the gates and the injection are `search.gates` and
`deltas.with_deltas`. Summing the pieces of each step (STEP_AS_PIECES) and comparing with the
measured step shows what the rest (optimizer updates, clipping, zeta solves, dispatch) costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from step_cost_setup import Setup
from step_cost_timing import Runner, measure_together

from s3delta_jax.deltas import init_delta, with_deltas
from s3delta_jax.search import gates, hypergrad

# Each step as a sum of pieces, following hypergrad.hypergradient and step.make_search_step.
STEP_AS_PIECES = {
    "retrain": ("retrain_grad",),
    "first_order": ("grad_alpha", "grad_delta"),
    "second_order_fd": ("grad_delta", "grad_delta_and_alpha", "hvp_fd_two_passes", "grad_delta"),
    "second_order_exact": ("grad_delta", "grad_delta_and_alpha", "hvp_jvp", "grad_delta"),
    # delta_gradient='reuse': the update reuses the first grad_delta.
    "second_order_fd+reuse": ("grad_delta", "grad_delta_and_alpha", "hvp_fd_two_passes"),
    "second_order_exact+reuse": ("grad_delta", "grad_delta_and_alpha", "hvp_jvp"),
    # hessian_dropout='shared': the first grad_delta and the Hessian term are one linearisation.
    "second_order_exact+shared": ("grad_delta_and_hvp_linearized", "grad_delta_and_alpha", "grad_delta"),
    "second_order_exact+shared+reuse": ("grad_delta_and_hvp_linearized", "grad_delta_and_alpha"),
}


def gated_loss_fn(setup: Setup) -> Callable:
    """`loss(params, delta, alpha, noise, batch, key)`: the search objective with every candidate
    gated; noise = (zeta, u) is fixed, as within one search step, so z-hat depends only on alpha."""

    def loss(params, delta, alpha, noise, batch, key):
        zeta, u = noise
        p = gates.gate_probabilities(alpha, setup.sizes, setup.budget, zeta=zeta)
        z = gates.concrete_from_uniform(u, p)
        return setup.loss_fn(with_deltas(setup.model_apply, setup.candidates, delta, z), params, batch, key)

    return loss


def search_pieces(setup: Setup) -> dict[str, Callable]:
    """The search step's pieces, each `(params, delta, alpha, noise, batch, key, v) -> array(s)`."""
    loss = gated_loss_fn(setup)
    grad_alpha = jax.grad(loss, argnums=2)

    def objective(params, noise):
        """The library's `objective(delta, alpha, batch, key)` for these backbone weights and noise."""
        return lambda delta, alpha, batch, key: loss(params, delta, alpha, noise, batch, key)

    def hvp_jvp(params, delta, alpha, noise, batch, key, v):
        return hypergrad.mixed_hvp_exact(objective(params, noise), delta, alpha, batch, key, v)

    def hvp_grad_of_jvp(params, delta, alpha, noise, batch, key, v):
        def along_v(a):
            return jax.jvp(lambda d: loss(params, d, a, noise, batch, key), (delta,), (v,))[1]

        return jax.grad(along_v)(alpha)

    def hvp_fd_two_passes(params, delta, alpha, noise, batch, key, v):
        return hypergrad.mixed_hvp_finite_difference(objective(params, noise), delta, alpha, batch,
                                                     jax.random.split(key), v)

    def hvp_fd_vmapped(params, delta, alpha, noise, batch, key, v):
        epsilon, plus, minus = hypergrad.finite_difference_points(delta, v)
        pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), plus, minus)
        grads = jax.vmap(grad_alpha, in_axes=(None, 0, None, None, None, 0))(
            params, pair, alpha, noise, batch, jax.random.split(key))
        return (grads[0] - grads[1]) / (2.0 * epsilon)

    def grad_delta_and_hvp_linearized(params, delta, alpha, noise, batch, key, v):
        _, grad_delta, linearized_hvp = hypergrad.gradient_and_mixed_hvp(objective(params, noise), delta, alpha,
                                                                          batch, key)
        return grad_delta, linearized_hvp(v)

    def ignoring_v(fn: Callable) -> Callable:
        return lambda params, delta, alpha, noise, batch, key, v: fn(params, delta, alpha, noise, batch, key)

    return {
        "search_forward": ignoring_v(loss),
        "grad_delta": ignoring_v(jax.grad(loss, argnums=1)),
        "grad_alpha": ignoring_v(grad_alpha),
        "grad_delta_and_alpha": ignoring_v(jax.grad(loss, argnums=(1, 2))),
        "hvp_jvp": hvp_jvp,
        "hvp_grad_of_jvp": hvp_grad_of_jvp,
        "hvp_fd_two_passes": hvp_fd_two_passes,
        "hvp_fd_vmapped": hvp_fd_vmapped,
        "grad_delta_and_hvp_linearized": grad_delta_and_hvp_linearized,
    }


def random_like(key: jax.Array, tree: Any, scale: float) -> Any:
    """A pytree of `scale` * N(0, 1) arrays shaped like `tree` (a direction v for the HVP)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def profile_pieces(setup: Setup, seed: int = 4) -> dict[str, Any]:
    """Median seconds of every piece, their sum per step, and the vmapped-vs-two-pass HVP check.

    Returns:
      piece_seconds {piece: median s}; piece_compile_seconds; piece_temp_bytes (XLA temp
      buffers; None where the backend gives no analysis); step_as_pieces; sum_of_pieces_seconds {step: s};
      hvp_fd_vmapped_over_two_passes (time ratio); hvp_fd_vmapped_max_abs_difference and
      hvp_fd_max_abs (the two HVPs agree to float rounding: same keys, same math); the same for
      hvp_grad_of_jvp against hvp_jvp (exact, so they agree to float rounding), and of the
      linearised term against hvp_jvp (same key: they agree to float rounding).
    """
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    n = len(setup.candidates)
    delta = init_delta(keys[0], setup.candidates)
    alpha = 0.1 * jax.random.normal(keys[1], (n,))
    noise = (gates.solve_zeta(alpha, setup.sizes, setup.budget), gates.sample_uniform(keys[2], n))
    args = (setup.params, delta, alpha, noise, setup.batch_delta, keys[3], random_like(keys[4], delta, 1e-3))
    runners = {name: Runner(fn, args) for name, fn in search_pieces(setup).items()}

    def retrain_loss(params, delta, batch, key):
        return setup.loss_fn(with_deltas(setup.model_apply, setup.structure, delta), params, batch, key)

    retrain_args = (setup.params, init_delta(keys[0], setup.structure), setup.batch_delta, keys[3])
    runners["retrain_forward"] = Runner(retrain_loss, retrain_args)
    runners["retrain_grad"] = Runner(jax.grad(retrain_loss, argnums=1), retrain_args)
    timed = measure_together(runners, setup.case.steps, 1)
    seconds = {name: result["median_step_seconds"] for name, result in timed.items()}
    hvps = {name: np.asarray(runner.output) for name, runner in runners.items() if name.startswith("hvp")}
    return {
        "piece_seconds": seconds,
        "piece_compile_seconds": {name: result["compile_seconds"] for name, result in timed.items()},
        "piece_temp_bytes": {name: (result["compiled_memory"] or {}).get("temp") for name, result in timed.items()},
        "step_as_pieces": {name: list(pieces) for name, pieces in STEP_AS_PIECES.items()},
        "sum_of_pieces_seconds": {name: sum(seconds[p] for p in pieces) for name, pieces in STEP_AS_PIECES.items()},
        "hvp_fd_vmapped_over_two_passes": seconds["hvp_fd_vmapped"] / seconds["hvp_fd_two_passes"],
        "hvp_fd_vmapped_max_abs_difference": float(np.abs(hvps["hvp_fd_two_passes"] - hvps["hvp_fd_vmapped"]).max()),
        "hvp_fd_max_abs": float(np.abs(hvps["hvp_fd_two_passes"]).max()),
        "hvp_grad_of_jvp_over_jvp": seconds["hvp_grad_of_jvp"] / seconds["hvp_jvp"],
        "hvp_grad_of_jvp_max_abs_difference": float(np.abs(hvps["hvp_grad_of_jvp"] - hvps["hvp_jvp"]).max()),
        "hvp_exact_max_abs": float(np.abs(hvps["hvp_jvp"]).max()),
        "hvp_linearized_max_abs_difference": float(
            np.abs(np.asarray(runners["grad_delta_and_hvp_linearized"].output[1]) - hvps["hvp_jvp"]).max()),
    }
