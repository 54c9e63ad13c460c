"""The Retrainer with an empty structure (a linear probe): only the task head trains, checked against
the analytic first and second AdamW steps of a quadratic loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.train.retrainer import Retrainer

LEARNING_RATE, TOTAL_STEPS = 0.1, 4
TARGET = np.array([1.0, -2.0, 0.5], np.float32)


def quadratic_loss(apply_fn, params, batch, dropout_key, extra):
    """0.5 ||w - target||^2 of the head weight w alone: the model's output is unused."""
    del apply_fn, params, batch, dropout_key
    return 0.5 * jnp.sum(jnp.square(extra["w"] - TARGET))


def test_an_empty_structure_trains_the_head_alone():
    retrainer = Retrainer(lambda *args, **kwargs: None, [], quadratic_loss, total_steps=TOTAL_STEPS,
                          learning_rate=LEARNING_RATE, clip_norm=0.5)
    w0 = np.array([0.0, 0.0, 3.0], np.float32)
    state = retrainer.init(jax.random.PRNGKey(0), extra={"w": jnp.asarray(w0)})
    assert state.delta == {}

    state, metrics = retrainer.step(state, {}, {})
    g0 = w0 - TARGET
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(g0), rtol=1e-6)  # before clipping
    # Adam's first bias-corrected step is lr * g / |g| elementwise, whatever the clip scaled g by.
    w1 = w0 - LEARNING_RATE * np.sign(g0)
    np.testing.assert_allclose(state.extra["w"], w1, atol=1e-6)
    assert state.delta == {}

    state, metrics = retrainer.step(state, {}, {})
    clip = lambda g: g * min(1.0, 0.5 / np.linalg.norm(g))  # noqa: E731
    c0, c1 = clip(g0), clip(w1 - TARGET)
    m = (0.9 * 0.1 * c0 + 0.1 * c1) / (1 - 0.9**2)
    v = (0.999 * 0.001 * c0**2 + 0.001 * c1**2) / (1 - 0.999**2)
    lr_step_1 = LEARNING_RATE * (1 - 1 / TOTAL_STEPS)  # linear decay to 0 over TOTAL_STEPS
    np.testing.assert_allclose(state.extra["w"], w1 - lr_step_1 * m / (np.sqrt(v) + 1e-8), atol=1e-5)  # float32
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(w1 - TARGET), rtol=1e-6)
