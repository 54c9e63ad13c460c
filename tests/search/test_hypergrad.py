"""Hypergradient estimators against the one-step-unrolled hypergradient computed by brute force."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s3delta_jax.search import hypergrad

N_GATES, D_IN = 4, 6


def objective(delta, alpha, batch, key):
    """A small smooth bi-level problem: gated tanh features, squared error plus a gated decay."""
    del key
    z = jax.nn.sigmoid(alpha)
    hidden = jnp.tanh(batch["x"] @ delta["w"])  # [batch, N]
    pred = hidden @ (z * delta["c"]) + batch["x"] @ delta["b"]
    return jnp.mean((pred - batch["y"]) ** 2) + 0.1 * jnp.sum(z * jnp.sum(delta["w"] ** 2, axis=0))


def make_problem(seed: int):
    rng = np.random.default_rng(seed)
    delta = {
        "w": jnp.asarray(rng.normal(size=(D_IN, N_GATES)), jnp.float32),
        "c": jnp.asarray(rng.normal(size=(N_GATES,)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(D_IN,)) * 0.1, jnp.float32),
    }
    alpha = jnp.asarray(rng.normal(size=(N_GATES,)), jnp.float32)

    def batch(n):
        return {"x": jnp.asarray(rng.normal(size=(n, D_IN)), jnp.float32), "y": jnp.asarray(rng.normal(size=(n,)), jnp.float32)}

    return delta, alpha, batch(16), batch(16)


def unrolled_hypergradient(delta, alpha, batch_delta, batch_alpha, xi):
    """d/dalpha L(b_alpha; delta - xi grad_delta L(b_delta; delta, alpha), alpha), by autodiff of the unroll."""

    def unrolled(a):
        g = jax.grad(objective)(delta, a, batch_delta, None)
        delta_virtual = jax.tree.map(lambda d, gi: d - xi * gi, delta, g)
        return objective(delta_virtual, a, batch_alpha, None)

    return jax.grad(unrolled)(alpha)


KEYS = jax.random.split(jax.random.key(0), 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator,tolerance", [("second_order_exact", 1e-5), ("second_order_fd", 1e-3)])
def test_second_order_matches_unrolled_hypergradient(seed, estimator, tolerance):
    delta, alpha, batch_delta, batch_alpha = make_problem(seed)
    xi = jnp.float32(0.05)
    expected = unrolled_hypergradient(delta, alpha, batch_delta, batch_alpha, xi)
    got, aux = jax.jit(
        lambda d, a: hypergrad.hypergradient(
            objective, d, a, batch_delta, batch_alpha, KEYS,
            estimator=estimator, virtual_step=hypergrad.sgd_virtual_step(xi), xi=xi,
        )
    )(delta, alpha)
    scale = float(jnp.max(jnp.abs(expected)))
    assert float(jnp.max(jnp.abs(got - expected))) <= tolerance * scale
    # The Hessian term matters here: dropping it would fail the same check.
    direct = jax.grad(objective, argnums=1)(
        jax.tree.map(lambda d, g: d - xi * g, delta, jax.grad(objective)(delta, alpha, batch_delta, None)),
        alpha, batch_alpha, None,
    )
    assert float(jnp.max(jnp.abs(direct - expected))) > 10 * tolerance * scale
    assert np.isfinite(float(aux["loss_alpha"]))


def test_first_order_is_the_direct_gradient():
    delta, alpha, batch_delta, batch_alpha = make_problem(3)
    got, _ = hypergrad.hypergradient(
        objective, delta, alpha, batch_delta, batch_alpha, KEYS,
        estimator="first_order", virtual_step=None, xi=jnp.float32(0.1),
    )
    expected = jax.grad(objective, argnums=1)(delta, alpha, batch_alpha, None)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_adam_virtual_step_is_one_step_of_the_live_optimizer_without_touching_it():
    """delta' = the torch AdamW formula with the live moments and count + 1; the state is unchanged."""
    delta, alpha, batch_delta, _ = make_problem(4)
    lr, b1, b2, eps = 3e-4, 0.9, 0.999, 1e-8
    optimizer = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=0.0)
    state = optimizer.init(delta)
    for _ in range(3):  # give the moments a history
        g = jax.grad(objective)(delta, alpha, batch_delta, None)
        updates, state = optimizer.update(g, state, delta)
        delta = optax.apply_updates(delta, updates)
    adam_state = state[0]
    g = jax.grad(objective)(delta, alpha, batch_delta, None)
    got = hypergrad.optimizer_virtual_step(optimizer, state)(delta, g)

    t = int(adam_state.count) + 1
    for name in delta:
        mu = b1 * np.asarray(adam_state.mu[name]) + (1 - b1) * np.asarray(g[name])
        nu = b2 * np.asarray(adam_state.nu[name]) + (1 - b2) * np.asarray(g[name]) ** 2
        denom = np.sqrt(nu) / np.sqrt(1 - b2**t) + eps
        expected = np.asarray(delta[name]) - lr / (1 - b1**t) * mu / denom
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-5, atol=1e-8)
    assert int(state[0].count) == t - 1


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown hypergradient estimator 'second_order'"):
        hypergrad.check_estimator("second_order")


def objective_with_dropout(delta, alpha, batch, key):
    """`objective` on inputs under inverted dropout (rate 0.3) drawn from `key`."""
    keep = jax.random.bernoulli(key, 0.7, batch["x"].shape)
    return objective(delta, alpha, {**batch, "x": jnp.where(keep, batch["x"] / 0.7, 0.0)}, None)


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_fd_dropout_matches_the_exact_term_and_independent_does_not(seed):
    """With dropout, the finite difference of the reference (a new mask per pass) is off by far more
    than its step; with one shared mask it matches the exact jvp taken under that same mask."""
    delta, alpha, batch_delta, batch_alpha = make_problem(seed)

    def estimate(estimator, fd_dropout="independent"):
        return hypergrad.hypergradient(
            objective_with_dropout, delta, alpha, batch_delta, batch_alpha, KEYS, estimator=estimator,
            virtual_step=hypergrad.sgd_virtual_step(jnp.float32(0.05)), xi=jnp.float32(0.05), fd_dropout=fd_dropout,
        )[0]

    exact = np.asarray(estimate("second_order_exact"))
    shared = np.asarray(estimate("second_order_fd", "shared"))
    independent = np.asarray(estimate("second_order_fd", "independent"))
    scale = np.abs(exact).max()
    assert np.abs(shared - exact).max() < 1e-3 * scale
    assert np.abs(independent - exact).max() > 1e-1 * scale


def test_unknown_fd_dropout_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fd_dropout 'same'.*independent, shared"):
        hypergrad.check_fd_dropout("same")


@pytest.mark.parametrize("estimator", ["second_order_fd", "second_order_exact"])
def test_second_order_reports_the_virtual_steps_loss_and_gradient(estimator):
    """What `delta_gradient='reuse'` takes for the delta update: L(b_delta; delta, alpha) and its gradient."""
    delta, alpha, batch_delta, batch_alpha = make_problem(0)
    _, aux = hypergrad.hypergradient(objective_with_dropout, delta, alpha, batch_delta, batch_alpha, KEYS,
                                     estimator=estimator, virtual_step=hypergrad.sgd_virtual_step(jnp.float32(0.05)),
                                     xi=jnp.float32(0.05))
    loss, grad = jax.value_and_grad(objective_with_dropout)(delta, alpha, batch_delta, KEYS[0])
    np.testing.assert_allclose(float(aux["loss_delta"]), float(loss), rtol=1e-6)
    for name in delta:
        np.testing.assert_allclose(np.asarray(aux["grad_delta"][name]), np.asarray(grad[name]), rtol=1e-5, atol=1e-7)


def unrolled_hypergradient_under_masks(delta, alpha, batch_delta, batch_alpha, xi, keys):
    """`unrolled_hypergradient` of `objective_with_dropout`: the inner gradient under keys[0], the
    outer loss under keys[1] (the masks of the virtual step's pass and of the b_alpha pass)."""

    def unrolled(a):
        g = jax.grad(objective_with_dropout)(delta, a, batch_delta, keys[0])
        delta_virtual = jax.tree.map(lambda d, gi: d - xi * gi, delta, g)
        return objective_with_dropout(delta_virtual, a, batch_alpha, keys[1])

    return jax.grad(unrolled)(alpha)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_hessian_dropout_is_the_unroll_under_the_virtual_steps_mask(seed):
    """With hessian_dropout='shared' the exact estimator differentiates the unroll in which the
    Hessian term sees the virtual step's own dropout mask; the reference's own mask for the term
    ('independent') gives another hypergradient."""
    delta, alpha, batch_delta, batch_alpha = make_problem(seed)
    xi = jnp.float32(0.05)
    expected = unrolled_hypergradient_under_masks(delta, alpha, batch_delta, batch_alpha, xi, KEYS)

    def estimate(hessian_dropout):
        return jax.jit(lambda d, a: hypergrad.hypergradient(
            objective_with_dropout, d, a, batch_delta, batch_alpha, KEYS, estimator="second_order_exact",
            virtual_step=hypergrad.sgd_virtual_step(xi), xi=xi, hessian_dropout=hessian_dropout,
        ))(delta, alpha)

    shared, shared_aux = estimate("shared")
    independent, independent_aux = estimate("independent")
    scale = float(jnp.max(jnp.abs(expected)))
    assert float(jnp.max(jnp.abs(shared - expected))) <= 1e-5 * scale
    assert float(jnp.max(jnp.abs(independent - expected))) > 1e-3 * scale
    # The virtual step's loss and gradient are the same pass either way.
    assert float(shared_aux["loss_delta"]) == pytest.approx(float(independent_aux["loss_delta"]), rel=1e-6)
    for got, want in zip(jax.tree.leaves(shared_aux["grad_delta"]), jax.tree.leaves(independent_aux["grad_delta"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_shared_hessian_dropout_without_dropout_is_the_exact_estimator():
    delta, alpha, batch_delta, batch_alpha = make_problem(5)
    xi = jnp.float32(0.05)

    def estimate(hessian_dropout):
        return hypergrad.hypergradient(
            objective, delta, alpha, batch_delta, batch_alpha, KEYS, estimator="second_order_exact",
            virtual_step=hypergrad.sgd_virtual_step(xi), xi=xi, hessian_dropout=hessian_dropout,
        )[0]

    expected = unrolled_hypergradient(delta, alpha, batch_delta, batch_alpha, xi)
    np.testing.assert_allclose(np.asarray(estimate("shared")), np.asarray(expected), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("name,estimator,message", [
    ("same", "second_order_exact", "unknown hessian_dropout 'same'.*independent, shared"),
    ("shared", "second_order_fd", "hessian_dropout 'shared' needs the estimator second_order_exact.*fd_dropout"),
    ("shared", "first_order", "hessian_dropout 'shared' needs the estimator second_order_exact"),
])
def test_bad_hessian_dropout_is_a_clear_error(name, estimator, message):
    with pytest.raises(ValueError, match=message):
        hypergrad.check_hessian_dropout(name, estimator)
