"""Gate probabilities and relaxed gate samples for S3Delta's structure search (pure, jittable).

Notation (reference section 3): N candidates, alpha f32[N] one structural scalar per candidate,
sizes f32[N] the parameter counts |delta_i|, B the parameter budget, tau the shifted-sigmoid
temperature (the reference's `--beta`).

  p~_i = sigmoid((alpha_i - zeta) / tau)             shifted sigmoid, zeta solved so that
  sum_i p~_i |delta_i| = B (1 - 1e-7)                (zeta is a constant for autodiff)
  p_i  = p~_i * sg(S) / S,  S = sum_j p~_j            global ("detach") normalisation:
                                                       same value, gradient of paper eq. 33
  z^_i = sigmoid((logit(u_i) + logit(p_i)) / T)       Binary Concrete, u_i ~ U(0, 1)

Everything here is a pure function of arrays: it runs under `jax.jit` on any device, with no host
round trip. Only `validate_budget` is host-side (numpy), meant to run once before a search.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from s3delta_jax.deltas.budget import BudgetError

# The reference's EPS: the budget equality is solved for B (1 - EPS), saturated probabilities are
# moved EPS away from 0 and 1, and uniform draws are kept EPS away from 0 and 1.
EPS = 1e-7
# The reference clamps the shifted-sigmoid argument from below at this value.
MIN_SIGMOID_ARG = -200.0
# Bisection halvings. The bracket is (max alpha - min alpha) + 2 tau wide; 64 halvings shrink it
# by 2^-64, far below one float32 ulp (2^-24 relative) of any zeta that can matter, after which
# the bracket stops moving (its midpoint equals an end point).
ZETA_ITERATIONS = 64
GATE_MODES = ("global", "local", "l0")


def validate_budget(sizes: ArrayLike, budget: float) -> None:
    """Raises BudgetError unless 0 < min(sizes) <= budget < sum(sizes). Host-side (numpy).

    Args:
      sizes: [N] parameter counts |delta_i| of the candidates.
      budget: the parameter budget B.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or sizes.size == 0:
        raise BudgetError(f"sizes must be a non-empty 1-D array of parameter counts, got shape {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise BudgetError("every candidate size must be a positive finite parameter count; drop empty candidates")
    total, smallest = float(sizes.sum()), float(sizes.min())
    if not np.isfinite(budget) or budget <= 0:
        raise BudgetError(f"budget B={budget} must be a positive parameter count; pass B > 0")
    if budget >= total:
        raise BudgetError(
            f"budget B={budget:g} is at least the whole search space ({total:g} params, {sizes.size} "
            "candidates), so every candidate fits and there is nothing to search; lower the budget "
            "or train all candidates directly"
        )
    if budget < smallest:
        raise BudgetError(
            f"budget B={budget:g} is smaller than the smallest candidate ({smallest:g} params), so no "
            f"candidate can ever be chosen; raise the budget to at least {smallest:g}"
        )


def check_gate_mode(mode: str) -> None:
    """Raises ValueError unless `mode` is one of GATE_MODES."""
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; use one of {', '.join(GATE_MODES)}")


def _logit(x: jax.Array) -> jax.Array:
    return jnp.log(x) - jnp.log1p(-x)


def shifted_sigmoid(alpha: ArrayLike, zeta: ArrayLike, tau: ArrayLike = 1.0) -> jax.Array:
    """p~ = sigmoid((alpha - zeta) / tau) with the reference's clamping. [N] -> f32[N].

    The sigmoid argument is clamped below at -200; a p~ that is exactly 1 (or 0) in float32 is
    moved EPS down (or up), so logit(p~) stays finite. The EPS shift is a constant: the gradient
    is that of the plain sigmoid.
    """
    x = jnp.maximum((jnp.asarray(alpha, jnp.float32) - zeta) / tau, MIN_SIGMOID_ARG)
    p = jax.nn.sigmoid(x)
    nudge = jnp.where(p == 1.0, -EPS, jnp.where(p == 0.0, EPS, 0.0))
    return p + lax.stop_gradient(nudge)


def expected_size(p: ArrayLike, sizes: ArrayLike) -> jax.Array:
    """sum_i p_i |delta_i|: the expected number of trained parameters. [N], [N] -> f32[]."""
    return jnp.sum(jnp.asarray(p, jnp.float32) * jnp.asarray(sizes, jnp.float32))


def solve_zeta(
    alpha: ArrayLike,
    sizes: ArrayLike,
    budget: ArrayLike,
    tau: ArrayLike = 1.0,
    iterations: int = ZETA_ITERATIONS,
) -> jax.Array:
    """The shift zeta with sum_i shifted_sigmoid(alpha, zeta, tau)_i |delta_i| = B (1 - EPS).

    Bisection with a fixed number of `lax.fori_loop` iterations (on device, no host round trip).
    With q = B (1 - EPS) / sum(sizes), the root lies in
    [min(alpha) - tau logit(q), max(alpha) - tau logit(q)]: every p~ is at least (at most)
    sigmoid(logit q) = q at the lower (upper) end. The bracket is widened by tau on each side to
    absorb the clamping. The result is under `stop_gradient` (the reference treats zeta as a
    constant). Assumes 0 < B < sum(sizes) (see `validate_budget`).

    zeta is resolved to one float32 ulp, the resolution alpha itself has. The budget is then met
    to about 1e-6 relative for alpha / tau spreads up to ~10, and within 1e-5 up to spreads of
    several hundred (measured on the t5-large sizes); beyond that, float32 quantisation of
    alpha - zeta dominates.

    Args:
      alpha: [N] structural parameters.
      sizes: [N] parameter counts |delta_i|.
      budget: the budget B (scalar).
      tau: shifted-sigmoid temperature.
      iterations: bisection steps (static).
    Returns:
      f32[] zeta.
    """
    alpha = lax.stop_gradient(jnp.asarray(alpha, jnp.float32))
    sizes = jnp.asarray(sizes, jnp.float32)
    tau = jnp.asarray(tau, jnp.float32)
    target = jnp.asarray(budget, jnp.float32) * (1.0 - EPS)
    q = jnp.clip(target / jnp.sum(sizes), EPS, 1.0 - EPS)
    centre = tau * _logit(q)
    lo = jnp.min(alpha) - centre - tau
    hi = jnp.max(alpha) - centre + tau

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        too_big = expected_size(shifted_sigmoid(alpha, mid, tau), sizes) > target
        # The expected size decreases in zeta: too big means the root is right of mid.
        return jnp.where(too_big, mid, lo), jnp.where(too_big, hi, mid)

    lo, hi = lax.fori_loop(0, iterations, halve, (lo, hi))
    # The bracket ends are now adjacent floats (or equal): take the one that meets B more closely.
    def miss(zeta):
        return jnp.abs(expected_size(shifted_sigmoid(alpha, zeta, tau), sizes) - target)

    return lax.stop_gradient(jnp.where(miss(lo) <= miss(hi), lo, hi))


def global_probabilities(p_tilde: ArrayLike) -> jax.Array:
    """p = p~ * sg(S) / S with S = sum_j p~_j (unweighted). f32[N] -> f32[N].

    The value equals p~ (sg(S) / S is exactly 1.0 in floating point); the gradient is paper eq. 33:
    dL/dalpha_i = p~_i'(alpha_i) [dL/dp_i - sum_j (p~_j / S) dL/dp_j].
    """
    p_tilde = jnp.asarray(p_tilde, jnp.float32)
    total = jnp.sum(p_tilde)
    return p_tilde * (lax.stop_gradient(total) / total)


def gate_probabilities(
    alpha: ArrayLike,
    sizes: ArrayLike,
    budget: ArrayLike,
    tau: ArrayLike = 1.0,
    mode: str = "global",
    zeta: ArrayLike | None = None,
) -> jax.Array:
    """Gate probabilities p f32[N] from alpha [N], differentiable w.r.t. alpha.

    Modes (static):
      "global": the reference: shifted sigmoid + global detach normalisation (eq. 33 gradient).
      "local":  shifted sigmoid only (the paper's ablation, eq. 29 gradient).
      "l0":     the reference's unused L0 option: p = sigmoid(alpha / tau), no budget shift
                (sizes and budget are ignored; pair it with `l0_penalty`).
    `zeta` may be passed to reuse a shift already solved for this alpha (e.g. shared across the
    hypergradient terms of one step); by default it is solved here.
    """
    check_gate_mode(mode)
    if mode == "l0":
        return shifted_sigmoid(alpha, 0.0, tau)
    if zeta is None:
        zeta = solve_zeta(alpha, sizes, budget, tau)
    p_tilde = shifted_sigmoid(alpha, lax.stop_gradient(zeta), tau)
    return global_probabilities(p_tilde) if mode == "global" else p_tilde


def l0_penalty(
    alpha: ArrayLike,
    sizes: ArrayLike | None = None,
    tau: ArrayLike = 1.0,
    temperature: ArrayLike = 1.0,
    low: float = -0.1,
    high: float = 1.1,
) -> jax.Array:
    """Expected L0 norm of the hard-concrete gates of mode "l0" (Louizos et al. 2018, eq. 12).

    With log_a = logit(p) = alpha / tau, the hard-concrete gate is
      z = clip(sigmoid((logit u + log_a) / T) (high - low) + low, 0, 1),  low < 0 < high,
    and P(z != 0) = sigmoid(log_a - T log(-low / high)). Returns
      sum_i w_i P(z_i != 0),  w = sizes (expected trained parameters) or 1 (expected count).
    The reference adds lambda0 * (this with w = 1) to the alpha loss; its code writes the
    `T log(-low/high)` term with tau in place of T, which is the same at its tau = T = 1.
    Its defaults low = 0, high = 1 make the log infinite: the option needs low < 0.

    Args:
      alpha: [N] structural parameters.
      sizes: optional [N] weights |delta_i|; None counts gates.
      tau: the sigmoid temperature of mode "l0".
      temperature: the concrete temperature T of the gate samples.
      low, high: the stretch interval (Python floats), low < 0 < high.
    Returns:
      f32[] expected (size-weighted) number of nonzero gates.
    """
    if not low < 0.0 < high:
        raise ValueError(
            f"the L0 penalty needs a stretch low < 0 < high, got low={low}, high={high}; "
            "use e.g. low=-0.1, high=1.1 (Louizos et al.)"
        )
    log_a = jnp.asarray(alpha, jnp.float32) / tau
    nonzero = jax.nn.sigmoid(log_a - temperature * np.log(-low / high))
    if sizes is None:
        return jnp.sum(nonzero)
    return expected_size(nonzero, sizes)


def sample_uniform(key: jax.Array, n: int) -> jax.Array:
    """u f32[n] ~ U(0, 1), clipped to [EPS, 1 - EPS] so logit(u) is finite.

    Draw u once to share one Binary Concrete sample across several evaluations (the reference
    shares it across the four hypergradient terms of a step) via `concrete_from_uniform`.
    """
    return jnp.clip(jax.random.uniform(key, (n,), jnp.float32), EPS, 1.0 - EPS)


def concrete_from_uniform(u: ArrayLike, p: ArrayLike, temperature: ArrayLike = 1.0) -> jax.Array:
    """z^ = sigmoid((logit u + logit p) / T): the Binary Concrete sample, differentiable in p.

    P(z^ > 0.5) = P(u > 1 - p) = p for every temperature T (paper eq. 24). [N], [N] -> f32[N].
    """
    return jax.nn.sigmoid((_logit(jnp.asarray(u, jnp.float32)) + _logit(jnp.asarray(p, jnp.float32))) / temperature)


def sample_concrete(key: jax.Array, p: ArrayLike, temperature: ArrayLike = 1.0) -> jax.Array:
    """A fresh Binary Concrete sample z^ f32[N] for probabilities p [N], one u per candidate."""
    p = jnp.asarray(p, jnp.float32)
    return concrete_from_uniform(sample_uniform(key, p.shape[0]), p, temperature)


def stretch_gates(z_hat: ArrayLike, p: ArrayLike, low: float = 0.0, high: float = 1.0) -> jax.Array:
    """The gates z the model sees: clip(z^ (high - low) + low, 0, 1). [N], [N] -> f32[N].

    The default (0, 1) is the reference's search setting and leaves z^ unchanged (soft gates).
    With low < 0 (hard concrete, mode "l0") gates can be exactly 0; if all are, the reference gives
    the candidate with the largest p the gate z = p, done here with `jnp.where`. Soft gates never
    hit it: with u, p in [EPS, 1 - EPS], z^ >= sigmoid(2 logit(EPS) / T) > 0 for T = 1.
    """
    z = jnp.clip(jnp.asarray(z_hat, jnp.float32) * (high - low) + low, 0.0, 1.0)
    p = jnp.asarray(p, jnp.float32)
    fallback = jnp.where(jnp.arange(p.shape[0]) == jnp.argmax(p), p, 0.0)
    return jnp.where(jnp.any(z > 0.0), z, fallback)
