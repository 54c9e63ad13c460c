"""Hypergradients of the validation loss with respect to the structural parameters alpha.

The bi-level problem (paper eq. 9-13, reference section 4): the delta weights minimise the training
loss on D_delta, alpha minimises the loss on D_alpha of the weights after one virtual step,

    F(alpha) = L(b_alpha; delta'(alpha), alpha),    delta'(alpha) = step(delta, grad_delta L(b_delta; delta, alpha)).

With an SGD virtual step delta' = delta - xi * g the chain rule gives

    dF/dalpha = grad_alpha L(b_alpha; delta', alpha) - xi * H v,   H v = d/d eps grad_alpha L(b_delta; delta + eps v, alpha)

with v = grad_delta' L(b_alpha; delta', alpha). The estimators differ only in how `H v` is formed:

  * ``second_order_fd``: central finite difference, eps = 0.01 / (||v|| + 1e-6) (the reference). The
    reference draws a new dropout mask in each of its two passes (``fd_dropout="independent"``); their
    gradients then differ by O(1) before the 1 / (2 eps), so with dropout on the term is mostly noise.
    ``fd_dropout="shared"`` gives both passes the same mask, as a finite difference wants.
  * ``second_order_exact``: forward-over-reverse, `jax.jvp` of `jax.grad` in the direction v. Like
    the reference's passes it draws its own dropout mask (``hessian_dropout="independent"``). Both
    it and the virtual step's gradient are taken at delta on b_delta, so with one mask
    (``hessian_dropout="shared"``) a single `jax.linearize` gives both: the gradient pass's forward
    and backward are not recomputed for the Hessian term, which costs only its tangent pass.
  * ``first_order``: xi = 0 and no virtual step (DARTS first order): dF/dalpha = grad_alpha L(b_alpha; delta, alpha).

The reference scales `H v` by the SGD learning rate xi even when its virtual step is Adam; we do the same.
`objective(delta, alpha, batch, dropout_key) -> scalar` carries everything else (the backbone, the shared
Binary Concrete noise and zeta) in its closure, so the estimators are model-agnostic.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Objective = Callable[[Any, jax.Array, Any, jax.Array], jax.Array]
VirtualStep = Callable[[Any, Any], Any]

ESTIMATORS = ("second_order_fd", "second_order_exact", "first_order")
VIRTUAL_STEPS = ("adam", "sgd")
FD_DROPOUT = ("independent", "shared")
HESSIAN_DROPOUT = ("independent", "shared")
FD_EPSILON_NUMERATOR = 0.01


def check_estimator(name: str) -> None:
    """Raises ValueError for an unknown estimator name."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown hypergradient estimator {name!r}: use one of {', '.join(ESTIMATORS)}")


def check_fd_dropout(name: str) -> None:
    """Raises ValueError for an unknown dropout policy of the finite-difference passes."""
    if name not in FD_DROPOUT:
        raise ValueError(f"unknown fd_dropout {name!r}: use one of {', '.join(FD_DROPOUT)}")


def check_hessian_dropout(name: str, estimator: str) -> None:
    """Raises ValueError for an unknown dropout policy of the exact Hessian term, or 'shared' with
    another estimator (the finite difference's passes are not at delta: see fd_dropout)."""
    if name not in HESSIAN_DROPOUT:
        raise ValueError(f"unknown hessian_dropout {name!r}: use one of {', '.join(HESSIAN_DROPOUT)}")
    if name == "shared" and estimator != "second_order_exact":
        raise ValueError(f"hessian_dropout 'shared' needs the estimator second_order_exact, not {estimator!r} "
                         "(second_order_fd's two passes share a mask with fd_dropout 'shared')")


def sgd_virtual_step(xi: jax.Array) -> VirtualStep:
    """delta' = delta - xi * g (the paper's eq. 11)."""
    return lambda delta, grads: jax.tree.map(lambda d, g: d - xi * g, delta, grads)


def optimizer_virtual_step(optimizer: optax.GradientTransformation, opt_state: Any) -> VirtualStep:
    """delta' = one full step of `optimizer` from its live state (the reference's AdamW virtual step).

    The state is only read: JAX arrays are immutable, so the real optimizer is untouched. The gradient
    is not clipped here, as in the reference.
    """

    def step(delta, grads):
        updates, _ = optimizer.update(grads, opt_state, delta)
        return optax.apply_updates(delta, updates)

    return step


def hypergradient(
    objective: Objective,
    delta: Any,
    alpha: jax.Array,
    batch_delta: Any,
    batch_alpha: Any,
    dropout_keys: jax.Array,
    *,
    estimator: str,
    virtual_step: VirtualStep,
    xi: jax.Array,
    fd_dropout: str = "independent",
    hessian_dropout: str = "independent",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Gradient of the one-step-unrolled validation loss with respect to alpha.

    Args:
      objective: `(delta, alpha, batch, dropout_key) -> scalar loss`.
      delta: the delta weights (any pytree).
      alpha: f32[N] structural parameters.
      batch_delta / batch_alpha: one batch from D_delta and one from D_alpha.
      dropout_keys: [4, 2] keys, one per forward pass (independent dropout masks as in the reference).
      estimator: one of ESTIMATORS.
      virtual_step: `(delta, grads) -> delta'`; unused by ``first_order``.
      xi: scale of the Hessian term (the current delta learning rate).
      fd_dropout: ``second_order_fd`` only: 'independent' (reference: keys 2 and 3 for the two passes)
        or 'shared' (key 2 for both, the key ``second_order_exact`` uses for its Hessian term).
      hessian_dropout: ``second_order_exact`` only: 'independent' (the Hessian term under key 2) or
        'shared' (under key 0, the virtual step's gradient pass; both from one `jax.linearize`).

    Returns:
      (grad_alpha f32[N], aux) with aux = {'loss_alpha': L(b_alpha; delta', alpha)}; the second-order
      estimators add the virtual step's 'loss_delta' = L(b_delta; delta, alpha) and its gradient
      'grad_delta' (a pytree like delta).
    """
    check_estimator(estimator)
    check_fd_dropout(fd_dropout)
    check_hessian_dropout(hessian_dropout, estimator)
    if estimator == "first_order":
        loss, grad_alpha = jax.value_and_grad(objective, argnums=1)(delta, alpha, batch_alpha, dropout_keys[0])
        return grad_alpha, {"loss_alpha": loss}

    if hessian_dropout == "shared":
        loss_delta, grad_delta, linearized_hvp = gradient_and_mixed_hvp(
            objective, delta, alpha, batch_delta, dropout_keys[0])
    else:
        loss_delta, grad_delta = jax.value_and_grad(objective)(delta, alpha, batch_delta, dropout_keys[0])
    delta_virtual = virtual_step(delta, grad_delta)
    loss, (v, grad_alpha_direct) = jax.value_and_grad(objective, argnums=(0, 1))(
        delta_virtual, alpha, batch_alpha, dropout_keys[1]
    )
    if hessian_dropout == "shared":
        hvp = linearized_hvp(v)
    elif estimator == "second_order_exact":
        hvp = mixed_hvp_exact(objective, delta, alpha, batch_delta, dropout_keys[2], v)
    else:
        fd_keys = dropout_keys[2:4] if fd_dropout == "independent" else dropout_keys[jnp.array([2, 2])]
        hvp = mixed_hvp_finite_difference(objective, delta, alpha, batch_delta, fd_keys, v)
    return grad_alpha_direct - xi * hvp, {"loss_alpha": loss, "loss_delta": loss_delta, "grad_delta": grad_delta}


def _grad_alpha(objective: Objective, delta, alpha, batch, key) -> jax.Array:
    return jax.grad(objective, argnums=1)(delta, alpha, batch, key)


def mixed_hvp_exact(objective: Objective, delta, alpha, batch, key, v) -> jax.Array:
    """d^2 L / (d alpha d delta) . v, exactly: jvp over delta of grad_alpha."""
    _, hvp = jax.jvp(lambda d: _grad_alpha(objective, d, alpha, batch, key), (delta,), (v,))
    return hvp


def gradient_and_mixed_hvp(
    objective: Objective, delta, alpha, batch, key
) -> tuple[jax.Array, Any, Callable[[Any], jax.Array]]:
    """(L, grad_delta L, v -> d^2 L / (d alpha d delta) . v) at delta, from one `jax.linearize`.

    The gradient pass is the linearisation's primal, so the Hessian term later costs only the tangent
    pass (no second forward and backward), at the price of keeping the linearisation's residuals
    alive until it is applied. Both see the dropout mask of `key`.
    """

    def loss_and_gradients(d):
        loss, (grad_delta, grad_alpha) = jax.value_and_grad(objective, argnums=(0, 1))(d, alpha, batch, key)
        return loss, grad_delta, grad_alpha

    (loss, grad_delta, _), tangents = jax.linearize(loss_and_gradients, delta)
    return loss, grad_delta, lambda v: tangents(v)[2]


def finite_difference_points(delta: Any, v: Any) -> tuple[jax.Array, Any, Any]:
    """(eps, delta + eps v, delta - eps v) with the reference's eps = 0.01 / (||v|| + 1e-6)."""
    epsilon = FD_EPSILON_NUMERATOR / (optax.tree.norm(v) + 1e-6)
    return (epsilon, jax.tree.map(lambda d, u: d + epsilon * u, delta, v),
            jax.tree.map(lambda d, u: d - epsilon * u, delta, v))


def mixed_hvp_finite_difference(objective: Objective, delta, alpha, batch, keys, v) -> jax.Array:
    """[grad_alpha L(delta + eps v) - grad_alpha L(delta - eps v)] / (2 eps), `keys[0]` / `keys[1]` the
    dropout keys of the two passes."""
    epsilon, delta_plus, delta_minus = finite_difference_points(delta, v)
    grad_plus = _grad_alpha(objective, delta_plus, alpha, batch, keys[0])
    grad_minus = _grad_alpha(objective, delta_minus, alpha, batch, keys[1])
    return (grad_plus - grad_minus) / (2.0 * epsilon)


def make_virtual_step(
    kind: str, optimizer: optax.GradientTransformation, opt_state: Any, xi: jax.Array
) -> VirtualStep:
    """`adam`: a full step of the live delta optimizer (reference); `sgd`: delta - xi g (paper)."""
    if kind == "adam":
        return optimizer_virtual_step(optimizer, opt_state)
    if kind == "sgd":
        return sgd_virtual_step(xi)
    raise ValueError(f"unknown virtual step {kind!r}: use one of {', '.join(VIRTUAL_STEPS)}")
