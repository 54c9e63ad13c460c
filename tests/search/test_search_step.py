"""The jitted search step on a tiny T5: every estimator, determinism, and p rising where it helps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import s3delta_jax.search as s3
from s3delta_jax.models import t5
from s3delta_jax.search.step import init_search_state

CONFIG = t5.get_config("t5-small", d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
                       num_decoder_layers=1, vocab_size=40, dropout_rate=0.0)
MODEL = t5.T5ForConditionalGeneration(CONFIG)
HELPFUL = "decoder/final_layer_norm:bitfit"
# Every target is the constant sequence [7, eos]: a bias right before the logits learns it at once,
# a bias on the first encoder layer's attention query hardly can.
SPACE = [[
    s3.Rule(r"decoder/final_layer_norm$", ("norm",), "bitfit"),
    s3.Rule(r"encoder/block_0/layer_0/SelfAttention/(q|k)$", ("linear",), "bitfit"),
]]


def loss_fn(apply_fn, params, batch, dropout_key):
    decoder_input_ids = t5.shift_right(batch["labels"], 0, 0)
    logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"], decoder_input_ids,
                      deterministic=False, rngs={"dropout": dropout_key})
    return t5.cross_entropy_loss(logits, batch["labels"])


def batch(seed: int) -> dict[str, jax.Array]:
    ids = np.random.default_rng(seed).integers(3, 40, size=(8, 6))
    return {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.ones((8, 6), jnp.int32),
            "labels": jnp.tile(jnp.array([[7, 1]], jnp.int32), (8, 1))}


@pytest.fixture(scope="module")
def setup():
    params = t5.init_params(CONFIG, jax.random.PRNGKey(0))
    ids = jax.ShapeDtypeStruct((1, 6), jnp.int32)
    positions = s3.discover_positions(MODEL, ids, ids, ids, deterministic=True)
    candidates = s3.expand(SPACE, positions).candidates
    return params, candidates


def make_searcher(candidates, estimator, **kwargs):
    # Budget of one d_model-sized bias out of three: the search must pick.
    return s3.Searcher(MODEL.apply, candidates, loss_fn, budget=CONFIG.d_model, total_steps=100,
                       settings=s3.SearchSettings(estimator=estimator), learning_rate=1e-2, **kwargs)


@pytest.mark.parametrize("estimator", ["second_order_fd", "second_order_exact", "first_order"])
def test_every_estimator_runs_and_is_deterministic_for_a_key(setup, estimator):
    params, candidates = setup
    searcher = make_searcher(candidates, estimator)

    def run(seed):
        state = searcher.init(jax.random.PRNGKey(seed))
        for i in range(3):
            state, metrics = searcher.step(state, params, batch(2 * i), batch(2 * i + 1))
        assert all(np.isfinite(float(v)) for v in metrics.values())
        return state

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(np.asarray(first.alpha), np.asarray(again.alpha))
    for a, b in zip(jax.tree.leaves(first.delta), jax.tree.leaves(again.delta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(first.alpha), np.asarray(other.alpha))
    assert np.any(np.asarray(first.alpha) != 0.0)  # alpha really moved


def test_p_of_the_helpful_candidate_rises_over_100_steps(setup):
    params, candidates = setup
    searcher = make_searcher(candidates, "second_order_fd")
    helpful = next(c.index for c in candidates if c.name == HELPFUL)
    state = searcher.init(jax.random.PRNGKey(0))
    p_start = np.asarray(searcher.probabilities(state.alpha))
    for i in range(100):
        state, _ = searcher.step(state, params, batch(2 * i), batch(2 * i + 1))
    p_end = np.asarray(searcher.probabilities(state.alpha))
    # Expected size stays at the budget, and the helpful candidate takes most of it.
    sizes = np.array([c.size for c in candidates])
    np.testing.assert_allclose((p_end * sizes).sum(), CONFIG.d_model, rtol=1e-4)
    assert p_end[helpful] > p_start[helpful] + 0.3
    assert p_end[helpful] == p_end.max()
    assert [c.name for c in searcher.select(state.alpha)] == [HELPFUL]


def loss_with_logit_bias(apply_fn, params, batch, dropout_key, extra):
    """loss_fn with always-trained `extra`: a bias f32[vocab] added to the logits (a tiny task head)."""
    decoder_input_ids = t5.shift_right(batch["labels"], 0, 0)
    logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"], decoder_input_ids,
                      deterministic=False, rngs={"dropout": dropout_key})
    return t5.cross_entropy_loss(logits + extra["logit_bias"], batch["labels"])


def test_extra_trains_with_delta_outside_the_budget(setup):
    params, candidates = setup
    searcher = s3.Searcher(MODEL.apply, candidates, loss_with_logit_bias, budget=CONFIG.d_model, total_steps=100,
                           settings=s3.SearchSettings(estimator="second_order_fd"), learning_rate=0.1)
    state = searcher.init(jax.random.PRNGKey(0), extra={"logit_bias": jnp.zeros((CONFIG.vocab_size,))})
    losses = []
    for i in range(30):
        state, metrics = searcher.step(state, params, batch(2 * i), batch(2 * i + 1))
        losses.append(float(metrics["loss_delta"]))
    bias = np.asarray(state.extra["logit_bias"])
    # The bias learns the target tokens (7, then EOS = 1) and the loss falls; the budget holds for the deltas alone.
    assert set(np.argsort(bias)[-2:]) == {1, 7} and losses[-1] < 0.5 * losses[0]
    sizes = np.array([c.size for c in candidates])
    np.testing.assert_allclose((np.asarray(searcher.probabilities(state.alpha)) * sizes).sum(), CONFIG.d_model, rtol=1e-4)
    assert {c.name for c in searcher.select(state.alpha)} <= {c.name for c in candidates}


def test_extra_takes_part_in_the_virtual_step(setup):
    """First order never looks past the current weights, so extra held in the state and the same values
    closed over as constants give the same alpha; second order differentiates through a virtual step
    that moves extra too, so the two differ."""
    params, candidates = setup
    bias = {"logit_bias": jax.random.normal(jax.random.PRNGKey(3), (CONFIG.vocab_size,))}

    def with_constant_bias(apply_fn, params, batch, dropout_key):
        return loss_with_logit_bias(apply_fn, params, batch, dropout_key, bias)

    def alpha_after_one_step(estimator, loss, extra):
        """alpha after one step of plain SGD (lr 1, no clipping) on it: minus the hypergradient."""
        sizes = np.array([c.size for c in candidates])
        settings = s3.SearchSettings(estimator=estimator, virtual_step="sgd", clip_norm=1e9)
        delta_optimizer = optax.sgd(1.0)
        step = jax.jit(s3.make_search_step(loss, MODEL.apply, candidates, sizes, CONFIG.d_model, settings,
                                           delta_optimizer, optax.sgd(1.0), lambda count: 1.0))
        delta = s3.init_delta(jax.random.PRNGKey(1), candidates)
        state = init_search_state(delta, len(candidates), delta_optimizer, optax.sgd(1.0), jax.random.PRNGKey(0),
                                  extra=extra)
        state, _ = step(state, params, batch(0), batch(1))
        return np.asarray(state.alpha), state

    alpha_state, state = alpha_after_one_step("first_order", loss_with_logit_bias, bias)
    alpha_constant, _ = alpha_after_one_step("first_order", with_constant_bias, None)
    np.testing.assert_allclose(alpha_state, alpha_constant, atol=1e-6)
    assert not np.allclose(np.asarray(state.extra["logit_bias"]), np.asarray(bias["logit_bias"]))

    second_state, _ = alpha_after_one_step("second_order_exact", loss_with_logit_bias, bias)
    second_constant, _ = alpha_after_one_step("second_order_exact", with_constant_bias, None)
    assert np.abs(second_state - second_constant).max() > 1e-2 * np.abs(second_constant).max()


def test_reuse_changes_the_delta_update_only(setup):
    """delta_gradient='reuse' takes the virtual step's gradient for the delta update: alpha moves exactly
    as with the reference's re-sampled pass, delta differently; first order has nothing to reuse."""
    params, candidates = setup

    def one_step(delta_gradient):
        searcher = s3.Searcher(MODEL.apply, candidates, loss_fn, budget=CONFIG.d_model, total_steps=100,
                               settings=s3.SearchSettings(estimator="second_order_exact", delta_gradient=delta_gradient))
        state, metrics = searcher.step(searcher.init(jax.random.PRNGKey(0)), params, batch(0), batch(1))
        return state, metrics

    reused, reused_metrics = one_step("reuse")
    resampled, resampled_metrics = one_step("resample")
    np.testing.assert_array_equal(np.asarray(reused.alpha), np.asarray(resampled.alpha))
    assert float(reused_metrics["loss_alpha"]) == float(resampled_metrics["loss_alpha"])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(reused.delta), jax.tree.leaves(resampled.delta)))
    with pytest.raises(ValueError, match="delta_gradient 'reuse' needs a second-order estimator"):
        s3.SearchSettings(estimator="first_order", delta_gradient="reuse")


def test_second_order_every_k_alternates_with_first_order(setup):
    """second_order_every=2 takes the second-order step on steps 0 and 2 and the first-order step on
    step 1: the same states (to float rounding: one program against two) as stepping the two
    estimators' own searchers by hand, and different from second order on every step."""
    params, candidates = setup

    def searcher(estimator, every=1):
        return s3.Searcher(MODEL.apply, candidates, loss_fn, budget=CONFIG.d_model, total_steps=100,
                           settings=s3.SearchSettings(estimator=estimator, second_order_every=every),
                           learning_rate=1e-2)

    alternating, second, first = searcher("second_order_exact", every=2), searcher("second_order_exact"), \
        searcher("first_order")
    state = by_hand = always_second = alternating.init(jax.random.PRNGKey(0))
    for i, step_by_hand in enumerate((second.step, first.step, second.step)):
        inputs = (params, batch(2 * i), batch(2 * i + 1))
        state, _ = alternating.step(state, *inputs)
        by_hand, _ = step_by_hand(by_hand, *inputs)
        always_second, _ = second.step(always_second, *inputs)
        for a, b in zip(jax.tree.leaves((state.alpha, state.delta)), jax.tree.leaves((by_hand.alpha, by_hand.delta))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(state.alpha) - np.asarray(always_second.alpha)).max() > 1e-4
    for settings, message in ((dict(estimator="first_order", second_order_every=2), "second-order estimator"),
                              (dict(delta_gradient="reuse", second_order_every=2), "second-order estimator"),
                              (dict(second_order_every=0), "at least 1")):
        with pytest.raises(ValueError, match=message):
            s3.SearchSettings(**settings)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.2])
def test_shared_hessian_dropout_changes_the_step_only_through_the_mask(setup, dropout_rate):
    """hessian_dropout='shared' (one jax.linearize for the virtual step's gradient and the exact
    Hessian term) is the reference's step where there is no dropout, and another hypergradient where
    the term's mask changes; with second_order_every=2 its first-order steps run too."""
    params, candidates = setup
    model = t5.T5ForConditionalGeneration(dataclasses.replace(CONFIG, dropout_rate=dropout_rate))

    def run(hessian_dropout, every=1, steps=2):
        """alpha after `steps` steps, and the first step's hypergradient norm (Adam's first alpha step
        is +-lr whatever the gradient). Learning rate 0.5: a large xi, so the Hessian term shows."""
        searcher = s3.Searcher(model.apply, candidates, loss_fn, budget=CONFIG.d_model, total_steps=100,
                               settings=s3.SearchSettings(estimator="second_order_exact", hessian_dropout=hessian_dropout,
                                                          second_order_every=every), learning_rate=0.5)
        state, norms = searcher.init(jax.random.PRNGKey(0)), []
        for i in range(steps):
            state, metrics = searcher.step(state, params, batch(2 * i), batch(2 * i + 1))
            norms.append(float(metrics["grad_norm_alpha"]))
        return np.asarray(state.alpha), norms[0]

    (shared, shared_norm), (independent, independent_norm) = run("shared"), run("independent")
    difference = abs(shared_norm - independent_norm) / independent_norm
    if dropout_rate == 0.0:  # the same numbers (measured: bit-identical on CPU)
        np.testing.assert_allclose(shared, independent, rtol=1e-5, atol=1e-7)
        assert difference < 1e-5
    else:  # the Hessian term's mask differs (measured: 1.2e-3 of the hypergradient's norm)
        assert difference > 1e-4
        assert not np.array_equal(run("shared", every=2)[0], shared)


def test_tau_acts_as_the_alpha_learning_rate(setup):
    """p = sigmoid((alpha - zeta) / tau) with alpha = 0 at the start and Adam's scale-free steps: tau t
    with alpha learning rate r searches exactly as tau 1 with rate r / t (alpha scaled by t), as long as
    the tau-1 search's alpha gradient norm stays below clip_norm * t (the tau-t search's, 1 / t times
    larger, is never clipped) and far above Adam's epsilon. SPACE without its bias on k, whose gradient
    is float noise (softmax ignores a shift shared by all keys) that Adam would blow up to full steps."""
    params, _ = setup
    ids = jax.ShapeDtypeStruct((1, 6), jnp.int32)
    space = [[SPACE[0][0], s3.Rule(r"encoder/block_0/layer_0/SelfAttention/q$", ("linear",), "bitfit")]]
    candidates = s3.expand(space, s3.discover_positions(MODEL, ids, ids, ids, deterministic=True)).candidates

    def run(tau, alpha_learning_rate):
        searcher = s3.Searcher(MODEL.apply, candidates, loss_fn, budget=CONFIG.d_model, total_steps=100,
                               settings=s3.SearchSettings(estimator="first_order", tau=tau), learning_rate=1e-2,
                               alpha_learning_rate=alpha_learning_rate)
        state, norms = searcher.init(jax.random.PRNGKey(0)), []
        for i in range(5):
            state, metrics = searcher.step(state, params, batch(2 * i), batch(2 * i + 1))
            norms.append(float(metrics["grad_norm_alpha"]))
        return state, np.asarray(searcher.probabilities(state.alpha)), max(norms)

    cold, cold_p, _ = run(tau=0.5, alpha_learning_rate=0.05)
    plain, plain_p, plain_norm = run(tau=1.0, alpha_learning_rate=0.1)
    _, slower_p, _ = run(tau=1.0, alpha_learning_rate=0.05)
    assert 1e-4 < plain_norm < s3.SearchSettings().clip_norm * 0.5
    np.testing.assert_allclose(np.asarray(cold.alpha) / 0.5, np.asarray(plain.alpha), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cold_p, plain_p, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(cold.delta), jax.tree.leaves(plain.delta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert np.abs(slower_p - plain_p).max() > 1e-3  # the rate alone does change p
