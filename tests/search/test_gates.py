"""Gate probabilities, zeta bisection, eq. 33 gradient, Binary Concrete and L0 penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from s3delta_jax.search import gates

REAL_SIZES = np.array([1024, 2048, 3168, 4096, 5120], dtype=np.float32)


def _random_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(REAL_SIZES, n)


@jax.jit
def _probabilities_and_zeta(alpha, sizes, budget):
    zeta = gates.solve_zeta(alpha, sizes, budget)
    return gates.gate_probabilities(alpha, sizes, budget, zeta=zeta), zeta


# --- zeta bisection -------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["mix", "random_10000"])
def test_solve_zeta_meets_budget(space, mix_sizes):
    rng = np.random.default_rng(0)
    sizes = mix_sizes if space == "mix" else _random_sizes(rng, 10_000)
    total = float(sizes.sum(dtype=np.float64))
    for scale in (0.1, 1.0, 10.0, 100.0):
        for budget in (102_458.0, 0.01 * total, 0.3 * total, 0.9 * total):
            alpha = (scale * rng.standard_normal(len(sizes))).astype(np.float32)
            p, zeta = _probabilities_and_zeta(alpha, sizes, budget)
            p = np.asarray(p, np.float64)
            assert np.isfinite(float(zeta))
            assert np.all((p > 0) & (p < 1))
            expected = (p * sizes).sum()
            assert abs(expected - budget) <= 1e-5 * budget, (scale, budget, expected)


@pytest.mark.parametrize(
    "space, budget, p0, zeta0",
    [("mix", 102_458.0, 0.0545, 2.854), ("mix", 25_670.0, 0.01365, 4.281), ("lora", 102_458.0, 0.1158, 2.033)],
)
def test_reference_numbers_at_zero_alpha(space, budget, p0, zeta0, mix_sizes, lora_sizes):
    sizes = mix_sizes if space == "mix" else lora_sizes
    p, zeta = _probabilities_and_zeta(jnp.zeros(len(sizes)), sizes, budget)
    exact_p0 = budget * (1 - 1e-7) / float(sizes.sum())
    np.testing.assert_allclose(np.asarray(p), exact_p0, rtol=1e-5)
    np.testing.assert_allclose(float(zeta), np.log((1 - exact_p0) / exact_p0), atol=1e-5)
    assert abs(float(p[0]) - p0) < 5e-5 and abs(float(zeta) - zeta0) < 1e-3


def test_solve_zeta_bracket_edge_cases():
    sizes = np.array([1024.0, 2048.0, 5120.0, 3168.0], np.float32)
    # One alpha far above the rest: zeta must sit inside that candidate's sigmoid.
    alpha = np.array([-50.0, -40.0, 300.0, -45.0], np.float32)
    p, _ = _probabilities_and_zeta(alpha, sizes, 2000.0)
    np.testing.assert_allclose(float(np.dot(np.asarray(p, np.float64), sizes)), 2000.0, rtol=1e-5)
    # Budget just below the whole space.
    p, _ = _probabilities_and_zeta(np.zeros(4, np.float32), sizes, float(sizes.sum()) - 1.0)
    np.testing.assert_allclose(float(np.dot(np.asarray(p, np.float64), sizes)), sizes.sum() - 1.0, rtol=1e-6)


def test_zeta_carries_no_gradient():
    rng = np.random.default_rng(1)
    alpha, sizes = rng.standard_normal(20).astype(np.float32), _random_sizes(rng, 20)
    grad = jax.grad(lambda a: gates.solve_zeta(a, sizes, 20_000.0))(alpha)
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize(
    "budget, problem",
    [(0.0, "positive"), (-5.0, "positive"), (10_336.0, "whole search space"), (1e9, "whole search space"),
     (1000.0, "smallest candidate")],
)
def test_validate_budget_errors(budget, problem):
    sizes = np.array([1024, 2048, 3168, 4096], np.float32)  # total 10,336
    with pytest.raises(gates.BudgetError, match=problem):
        gates.validate_budget(sizes, budget)
    assert issubclass(gates.BudgetError, ValueError)


def test_validate_budget_accepts_valid_budget(mix_sizes):
    gates.validate_budget(mix_sizes, 102_458.0)
    gates.validate_budget(mix_sizes, 1024.0)


# --- gradients (paper appendix C.2) ---------------------------------------------------------------


def _quadratic_loss(rng: np.random.Generator, n: int):
    """L(p) = c.p + p.Q.p / 2 with its gradient dL/dp = c + Q p."""
    c = rng.standard_normal(n).astype(np.float32)
    q = rng.standard_normal((n, n)).astype(np.float32)
    q = (q + q.T) / 2
    return (lambda p: jnp.dot(c, p) + 0.5 * p @ q @ p), (lambda p: c + q @ p)


@pytest.mark.parametrize("mode", ["global", "local", "l0"])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_alpha_gradient_matches_closed_form(mode, tau):
    rng = np.random.default_rng(2)
    n = 40
    alpha = (2.0 * rng.standard_normal(n)).astype(np.float32)
    sizes = _random_sizes(rng, n)
    budget = 0.2 * float(sizes.sum())
    loss, loss_grad = _quadratic_loss(rng, n)
    probabilities = lambda a: gates.gate_probabilities(a, sizes, budget, tau, mode)

    grad = np.asarray(jax.jit(jax.grad(lambda a: loss(probabilities(a))))(alpha), np.float64)

    p = np.asarray(probabilities(alpha), np.float64)
    g = np.asarray(loss_grad(p.astype(np.float32)), np.float64)
    dp_dalpha = p * (1 - p) / tau
    if mode == "global":  # eq. 33
        expected = dp_dalpha * (g - np.sum(p / p.sum() * g))
    else:  # eq. 29 (the l0 mode is a plain sigmoid as well)
        expected = dp_dalpha * g
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_global_normalisation_keeps_values_and_cancels_uniform_gradients():
    rng = np.random.default_rng(3)
    alpha, sizes = rng.standard_normal(30).astype(np.float32), _random_sizes(rng, 30)
    local = gates.gate_probabilities(alpha, sizes, 20_000.0, mode="local")
    global_ = gates.gate_probabilities(alpha, sizes, 20_000.0, mode="global")
    np.testing.assert_array_equal(np.asarray(local), np.asarray(global_))
    # Equal dL/dp for every candidate passes no gradient to alpha (paper, after eq. 34).
    grad = jax.grad(lambda a: 3.0 * jnp.sum(gates.gate_probabilities(a, sizes, 20_000.0)))(alpha)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)


def test_l0_mode_ignores_budget_and_unknown_mode_fails():
    alpha = jnp.array([-3.0, 0.0, 2.0])
    p = gates.gate_probabilities(alpha, None, None, tau=2.0, mode="l0")
    np.testing.assert_allclose(np.asarray(p), 1 / (1 + np.exp(-np.array([-1.5, 0.0, 1.0]))), rtol=1e-6)
    with pytest.raises(ValueError, match="global, local, l0"):
        gates.gate_probabilities(alpha, jnp.ones(3), 1.0, mode="softmax")


def test_shifted_sigmoid_clamping_keeps_logit_finite():
    p = gates.shifted_sigmoid(jnp.array([-1e4, -300.0, 0.0, 40.0, 1e4]), 0.0, 1.0)
    p = np.asarray(p)
    assert p[0] == p[1] == np.float32(1e-7) and p[2] == 0.5
    assert p[3] == p[4] == np.float32(1.0) - np.float32(1e-7) and p[4] < 1.0


# --- Binary Concrete ------------------------------------------------------------------------------

PROBABILITIES = np.array([0.002, 0.0545, 0.3, 0.5, 0.77, 0.999], np.float32)


def test_concrete_exceeds_half_with_probability_p():
    draws = 200_000
    z = gates.sample_concrete(jax.random.key(0), jnp.tile(PROBABILITIES, draws))
    frequency = (np.asarray(z).reshape(draws, -1) > 0.5).mean(axis=0)
    p = PROBABILITIES.astype(np.float64)
    bound = 5 * np.sqrt(p * (1 - p) / draws)  # binomial 5 sigma
    assert np.all(np.abs(frequency - p) <= bound), (frequency, p)


@pytest.mark.parametrize("temperature", [1.0, 0.3, 3.0])
def test_concrete_threshold_is_u_above_one_minus_p(temperature):
    p = jnp.asarray(PROBABILITIES)
    for offset in (-1e-3, 1e-3):
        u = jnp.clip(1.0 - p + offset, 1e-7, 1 - 1e-7)
        z = np.asarray(gates.concrete_from_uniform(u, p, temperature))
        assert np.all((z > 0.5) == (offset > 0)), (offset, z)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_concrete_distribution_matches_cdf(temperature):
    """P(z^ <= z) = P(logit u <= T logit z - logit p) = sigmoid(T logit z - logit p)."""
    p = 0.3
    z = np.asarray(gates.sample_concrete(jax.random.key(1), jnp.full(20_000, p), temperature), np.float64)
    logit = lambda x: np.log(x) - np.log1p(-x)
    cdf = lambda x: 1 / (1 + np.exp(-(temperature * logit(np.clip(x, 1e-12, 1 - 1e-12)) - logit(p))))
    assert stats.kstest(z, cdf).pvalue > 1e-3


def test_sample_uniform_range_and_keys():
    u = np.asarray(gates.sample_uniform(jax.random.key(2), 100_000))
    assert u.shape == (100_000,) and u.min() >= np.float32(1e-7) and u.max() <= np.float32(1 - 1e-7)
    assert not np.array_equal(u[:10], np.asarray(gates.sample_uniform(jax.random.key(3), 10)))


def test_concrete_gradient_through_p():
    u = jnp.array([0.1, 0.5, 0.9, 0.3])
    p = jnp.array([0.2, 0.6, 0.05, 0.9])
    temperature = 0.7
    grad = jax.grad(lambda p: jnp.sum(gates.concrete_from_uniform(u, p, temperature)))(p)
    z = np.asarray(gates.concrete_from_uniform(u, p, temperature), np.float64)
    pn = np.asarray(p, np.float64)
    expected = z * (1 - z) / temperature / (pn * (1 - pn))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5)


def test_stretch_gates_default_is_identity_and_all_zero_fallback():
    p = jnp.array([0.2, 0.7, 0.4])
    z_hat = gates.sample_concrete(jax.random.key(4), p)
    np.testing.assert_array_equal(np.asarray(gates.stretch_gates(z_hat, p)), np.asarray(z_hat))
    stretched = np.asarray(gates.stretch_gates(jnp.array([0.05, 0.5, 0.99]), p, -0.1, 1.1))
    np.testing.assert_allclose(stretched, [0.0, 0.5, 1.0], atol=1e-6)
    # Every gate clipped to 0: the largest-p candidate gets z = p, with gradient through p.
    fallback = gates.stretch_gates(jnp.full(3, 0.01), p, -0.1, 1.1)
    np.testing.assert_allclose(np.asarray(fallback), [0.0, 0.7, 0.0], rtol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(gates.stretch_gates(jnp.full(3, 0.01), p, -0.1, 1.1)))(p)
    np.testing.assert_allclose(np.asarray(grad), [0.0, 1.0, 0.0])


# --- L0 penalty -----------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("tau, temperature", [(1.0, 1.0), (0.5, 2.0 / 3.0)])
def test_l0_penalty_matches_monte_carlo(weighted, tau, temperature):
    low, high = -0.1, 1.1
    alpha = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 6.0]) * tau
    sizes = jnp.asarray(REAL_SIZES[[0, 1, 2, 3, 4, 0, 1, 2]]) if weighted else None
    p = gates.gate_probabilities(alpha, None, None, tau, mode="l0")
    draws = 100_000
    keys = jax.random.split(jax.random.key(5), draws)
    z = jax.vmap(lambda k: gates.stretch_gates(gates.sample_concrete(k, p, temperature), p, low, high))(keys)
    nonzero = np.asarray(z) > 0
    weights = np.ones(8) if sizes is None else np.asarray(sizes, np.float64)
    estimate = (nonzero * weights).sum(axis=1).mean()
    rate = nonzero.mean(axis=0)
    std_error = np.sqrt(np.sum(weights**2 * rate * (1 - rate)) / draws)
    penalty = float(gates.l0_penalty(alpha, sizes, tau, temperature, low, high))
    assert abs(penalty - estimate) <= 5 * std_error, (penalty, estimate, std_error)


def test_l0_penalty_needs_a_negative_stretch():
    with pytest.raises(ValueError, match="low < 0 < high"):
        gates.l0_penalty(jnp.zeros(3), low=0.0, high=1.0)
