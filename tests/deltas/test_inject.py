"""Injection with nn.intercept_methods: exact zero-init identity, hand-computed effects on a custom
model and on T5, jit / grad, KV-cache decoding, custom norms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltas_reference import contribution, make_candidates, normalise, numpy_tinynet, random_delta

from s3delta_jax.deltas import (
    InjectionError,
    Rule,
    candidate_params,
    delta_param_count,
    expand,
    init_delta,
    with_deltas,
)
from s3delta_jax.models.t5.spaces import SPACES as T5_SPACES


# ------------------------------------------------------------------------------------------
# The custom model: every delta type against the NumPy twin.

CASES = {
    "lora": [("mixer_0/up", "lora", {"r": 2, "alpha": 4})],
    "bitfit_linear": [("mixer_0/up", "bitfit", {})],
    "bitfit_head": [("head", "bitfit", {})],
    "lnfit_layernorm": [("mixer_1/norm", "lnfit", {})],
    "lnfit_rms": [("final", "lnfit", {})],
    "low_rank_adapter": [("mixer_1", "low_rank_adapter", {"reduction": 2})],
    "adapter": [("mixer_0", "adapter", {"bottleneck": 3})],
    "parallel_adapter": [("mixer_0", "parallel_adapter", {"bottleneck": 3})],
    "parallel_and_sequential_at_one_place": [
        ("mixer_0/up", "lora", {}),
        ("mixer_0/up", "bitfit", {}),
        ("mixer_0/up", "low_rank_adapter", {"reduction": 4}),
    ],
}


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_each_delta_type_against_numpy(tinynet, case, gated):
    candidates = make_candidates(tinynet.positions, CASES[case])
    delta = random_delta(candidates)
    gates = np.array([0.3, 0.7, 0.45][: len(candidates)], np.float32) if gated else None
    apply = with_deltas(tinynet.model.apply, candidates, delta, None if gates is None else jnp.asarray(gates))
    got = apply({"params": tinynet.params}, tinynet.x)

    by_name: dict[str, list] = {}
    for c in candidates:
        by_name.setdefault(c.position.name, []).append(c)

    def modifier(here):
        def modify(x, y):
            z = {c.index: 1.0 if gates is None else float(gates[c.index]) for c in here}
            norm = (here[0].position.norm_kind, here[0].position.epsilon)
            out = y
            for c in (c for c in here if c.slot == "parallel"):
                out = out + z[c.index] * contribution(c.delta_type, candidate_params(delta, c), x, y, c.kwargs, norm)
            augmented = out
            for c in (c for c in here if c.slot == "sequential"):
                out = out + z[c.index] * contribution(c.delta_type, candidate_params(delta, c), x, augmented, c.kwargs, norm)
            return out

        return modify

    expected = numpy_tinynet(tinynet.params, tinynet.x, {name: modifier(here) for name, here in by_name.items()})
    untouched = numpy_tinynet(tinynet.params, tinynet.x)
    assert np.abs(expected - untouched).max() > 1e-2  # the delta really changes the output
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_zero_initialised_deltas_leave_the_custom_model_unchanged(tinynet):
    rules = [[Rule(".*", "linear", "lora"), Rule(".*", ("linear", "norm"), "bitfit"), Rule(".*", "norm", "lnfit")]]
    candidates = expand(rules, tinynet.positions).candidates
    delta = init_delta(jax.random.key(0), candidates)
    backbone = tinynet.model.apply({"params": tinynet.params}, tinynet.x)
    injected = with_deltas(tinynet.model.apply, candidates, delta)({"params": tinynet.params}, tinynet.x)
    np.testing.assert_array_equal(injected, backbone)


def test_lnfit_on_a_registered_custom_norm(gammanet):
    model, params, x, positions = gammanet
    candidates = expand([[Rule("gn", "norm", "lnfit")]], positions).candidates
    delta = random_delta(candidates)
    got = with_deltas(model.apply, candidates, delta)({"params": params}, x)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    h = x @ p["inp"]["kernel"] + p["inp"]["bias"]
    s = np.asarray(delta["gn"]["lnfit"]["s"], np.float64)
    hidden = (p["gn"]["gamma"] + s) * normalise(h, "layernorm", 0.1) + p["gn"]["beta"]
    np.testing.assert_allclose(got, hidden @ p["out"]["kernel"] + p["out"]["bias"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# T5.


def test_zero_contributions_leave_t5_unchanged(tiny_t5):
    """All 'zero at init' deltas on, and the (non-zero) low-rank adapters gated off: exactly the backbone."""
    candidates = expand(T5_SPACES["s3pet_mix"], tiny_t5.positions).candidates
    delta = init_delta(jax.random.key(0), candidates)
    gates = jnp.asarray([0.0 if c.delta_type == "low_rank_adapter" else 1.0 for c in candidates])
    ungated = [c for c in candidates if c.delta_type != "low_rank_adapter"]

    @jax.jit
    def logits(params, delta, gates):
        backbone = tiny_t5.logits(tiny_t5.model.apply, params)
        gated = tiny_t5.logits(with_deltas(tiny_t5.model.apply, candidates, delta, gates), params)
        plain = tiny_t5.logits(with_deltas(tiny_t5.model.apply, ungated, delta), params)
        return backbone, gated, plain

    backbone, gated, plain = logits(tiny_t5.params, delta, gates)
    np.testing.assert_array_equal(gated, backbone)
    np.testing.assert_array_equal(plain, backbone)


def test_t5_lora_and_lnfit_equal_hand_edited_weights(tiny_t5):
    specs = [
        ("encoder/block_0/layer_0/SelfAttention/q", "lora", {}),
        ("decoder/block_0/layer_2/DenseReluDense/wi", "lora", {"r": 2}),
        ("decoder/block_0/layer_1/layer_norm", "lnfit", {}),
    ]
    candidates = make_candidates(tiny_t5.positions, specs)
    delta = random_delta(candidates, scale=0.3)
    edited = jax.tree_util.tree_map(np.array, tiny_t5.params)
    q = edited["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"]
    lora = delta["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"]["lora"]
    q["kernel"] = q["kernel"] + 16.0 * np.asarray(lora["A"]) @ np.asarray(lora["B"])
    wi = edited["decoder"]["block_0"]["layer_2"]["DenseReluDense"]["wi"]
    lora = delta["decoder"]["block_0"]["layer_2"]["DenseReluDense"]["wi"]["lora"]
    wi["kernel"] = wi["kernel"] + 8.0 * np.asarray(lora["A"]) @ np.asarray(lora["B"])
    norm = edited["decoder"]["block_0"]["layer_1"]["layer_norm"]
    norm["scale"] = norm["scale"] + np.asarray(delta["decoder"]["block_0"]["layer_1"]["layer_norm"]["lnfit"]["s"])

    @jax.jit
    def logits(params, edited, delta):
        injected = tiny_t5.logits(with_deltas(tiny_t5.model.apply, candidates, delta), params)
        return injected, tiny_t5.logits(tiny_t5.model.apply, edited), tiny_t5.logits(tiny_t5.model.apply, params)

    injected, expected, backbone = logits(tiny_t5.params, edited, delta)
    assert np.abs(expected - backbone).max() > 1e-2
    np.testing.assert_allclose(injected, expected, rtol=1e-5, atol=1e-5)


def test_gradients_under_jit(tinynet):
    specs = [
        ("mixer_0/up", "lora", {}),
        ("mixer_0/up", "bitfit", {}),
        ("final", "lnfit", {}),
        ("mixer_1", "low_rank_adapter", {"reduction": 2}),
    ]
    candidates = make_candidates(tinynet.positions, specs)
    delta = init_delta(jax.random.key(0), candidates)
    gates = jnp.full((len(candidates),), 0.5)

    def loss(delta, gates):
        out = with_deltas(tinynet.model.apply, candidates, delta, gates)({"params": tinynet.params}, tinynet.x)
        return jnp.mean(jnp.sin(out))

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    _, (grad_delta, grad_gates) = value_and_grad(delta, gates)
    lora = grad_delta["mixer_0"]["up"]["lora"]
    assert not np.any(lora["A"]) and np.any(lora["B"])  # B = 0 blocks A's gradient, not B's
    assert np.any(grad_delta["final"]["lnfit"]["s"]) and np.any(grad_delta["mixer_1"]["low_rank_adapter"]["up_bias"])
    # LoRA / BitFit / LNFit contribute 0 at init: d loss / dz = 0 there; the adapters' is not.
    lra = np.array([c.delta_type == "low_rank_adapter" for c in candidates])
    assert not np.any(grad_gates[~lra]) and np.all(grad_gates[lra] != 0)
    for i in np.flatnonzero(lra):
        step = jnp.zeros_like(gates).at[i].set(0.01)
        numeric = (value_and_grad(delta, gates + step)[0] - value_and_grad(delta, gates - step)[0]) / 0.02
        np.testing.assert_allclose(grad_gates[i], numeric, rtol=1e-2, atol=1e-6)


def test_cached_decoding_sees_the_same_deltas(tiny_t5):
    """Step-by-step decoding with the KV cache (mutable 'cache') gives the full decode's logits."""
    rules = [
        Rule(".*", "linear", "lora"),  # every linear, cross-attention keys / values (cached) included
        Rule(r"(shared@attend|layer_norm)", ("linear", "norm"), "bitfit"),
        Rule("(SelfAttention|EncDecAttention|DenseReluDense)", "block", "low_rank_adapter"),
    ]
    candidates = expand([rules], tiny_t5.positions).candidates
    delta = random_delta(candidates, scale=0.2)
    apply = with_deltas(tiny_t5.model.apply, candidates, delta)
    b, params = tiny_t5.batch, {"params": tiny_t5.params}
    targets = b["decoder_input_ids"]

    @jax.jit
    def full_decode_and_cache(params):
        encoded = apply(params, b["input_ids"], b["attention_mask"], method="encode")
        full = apply(params, targets, encoded, b["attention_mask"], method="decode")
        _, variables = apply(params, targets.shape[1], encoded, b["attention_mask"], method="init_cache", mutable=["cache"])
        return encoded, full, variables["cache"], tiny_t5.logits(tiny_t5.model.apply, params["params"])

    @jax.jit
    def step(params, encoded, cache, token):
        return apply({**params, "cache": cache}, token, encoded, b["attention_mask"], decode=True, method="decode", mutable=["cache"])

    encoded, full, cache, backbone = full_decode_and_cache(params)
    assert np.abs(full - backbone).max() > 1e-2
    for t in range(targets.shape[1]):
        logits, variables = step(params, encoded, cache, targets[:, t : t + 1])
        cache = variables["cache"]
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-4, atol=1e-5)


def test_init_delta_layout_and_independence(tiny_t5):
    candidates = expand(T5_SPACES["s3pet_mix"], tiny_t5.positions).candidates
    delta = init_delta(jax.random.key(7), candidates)
    q = delta["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"]
    assert set(q) == {"lora", "bitfit"} and set(q["lora"]) == {"A", "B"}
    assert delta_param_count(delta) == sum(c.size for c in candidates)
    lra = [c for c in candidates if c.delta_type == "low_rank_adapter"][3]
    alone = init_delta(jax.random.key(7), [lra])
    np.testing.assert_array_equal(candidate_params(alone, lra)["down_left"], candidate_params(delta, lra)["down_left"])


def test_gates_are_indexed_by_candidate_index(tiny_t5):
    """A subset of candidates keeps its indices; gate i scales candidate i only."""
    everything = expand(T5_SPACES["s3pet_mix"], tiny_t5.positions).candidates
    lras = [c for c in everything if c.delta_type == "low_rank_adapter"][:2]
    delta = init_delta(jax.random.key(0), everything)
    gates = jnp.zeros((len(everything),)).at[lras[1].index].set(1.0)

    @jax.jit
    def logits(params, delta, gates):
        gated = tiny_t5.logits(with_deltas(tiny_t5.model.apply, lras, delta, gates), params)
        return gated, tiny_t5.logits(with_deltas(tiny_t5.model.apply, lras[1:], delta), params)

    gated, only_second = logits(tiny_t5.params, delta, gates)
    np.testing.assert_allclose(gated, only_second, rtol=1e-6, atol=1e-6)


def test_missing_delta_parameters_and_short_gate_vectors_are_errors(tiny_t5):
    candidates = expand(T5_SPACES["s3pet_lora"], tiny_t5.positions).candidates
    delta = init_delta(jax.random.key(0), candidates[:-1])
    with pytest.raises(InjectionError, match=r"no parameters for candidate decoder/block_0/layer_2/DenseReluDense/wo:lora \(missing 'wo'\)"):
        with_deltas(tiny_t5.model.apply, candidates, delta)
    with pytest.raises(InjectionError, match=r"gate_values must be a vector of at least 12 gates .* got shape \(11,\)"):
        with_deltas(tiny_t5.model.apply, candidates, init_delta(jax.random.key(0), candidates), jnp.ones((11,)))
