"""Scanned layers: T5 with its blocks under nn.scan computes what the unrolled T5 computes, with
gated deltas, their gradients, the decode cache and a whole search step; layouts convert both ways;
non-uniform deltas are refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltas_reference import make_candidates, random_delta, random_model_params

import s3delta_jax.search as s3
from s3delta_jax.deltas import InjectionError, discover_positions, expand, with_deltas
from s3delta_jax.deltas.scan import ScanError, ScannedLayers, stack_layers, unstack_layers
from s3delta_jax.models import t5
from s3delta_jax.models.t5.spaces import SPACES as T5_SPACES

CONFIG = t5.T5Config(
    vocab_size=40, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_decoder_layers=4, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
)
SCANNED = dataclasses.replace(CONFIG, scan_layers=True)
SCANS = t5.scanned_layers(SCANNED)
IDS = jax.ShapeDtypeStruct((1, 1), jnp.int32)


@pytest.fixture(scope="module")
def setup():
    params = random_model_params(t5.param_shapes(CONFIG), seed=4)
    positions = discover_positions(t5.T5ForConditionalGeneration(CONFIG), IDS, IDS, IDS, IDS)
    candidates = expand(T5_SPACES["s3pet_mix"], positions).candidates
    rng = np.random.default_rng(5)
    batch = {
        "input_ids": rng.integers(2, CONFIG.vocab_size, (2, 7)).astype(np.int32),
        "attention_mask": np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32),
        "decoder_input_ids": rng.integers(2, CONFIG.vocab_size, (2, 5)).astype(np.int32),
    }
    return params, positions, candidates, batch


def logits_fn(config, candidates, scans, batch):
    model = t5.T5ForConditionalGeneration(config)

    def logits(params, delta, gates):
        apply = with_deltas(model.apply, candidates, delta, gates, scans)
        return apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])

    return logits


def _at(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def test_the_scanned_layout_is_the_stacked_unscanned_one(setup):
    params = setup[0]
    assert [(s.parent, s.first, s.count, s.name, s.kept) for s in SCANS] == [
        ((stack,), 0, depth, "block_scan", (("layer_0", "SelfAttention", "relative_attention_bias"),))
        for stack, depth in (("encoder", 3), ("decoder", 4))]
    stacked = stack_layers(params, SCANS, "params")
    assert set(stacked["encoder"]) == {"block_0", "block_scan", "final_layer_norm"}
    table = stacked["decoder"]["block_0"]  # block_0 keeps only the relative position table
    relative = ("layer_0", "SelfAttention", "relative_attention_bias", "embedding")
    np.testing.assert_array_equal(_at(table, relative), _at(params["decoder"]["block_0"], relative))
    assert len(jax.tree.leaves(table)) == 1
    expected = t5.param_shapes(SCANNED)
    assert jax.tree.structure(stacked) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(expected)):
        assert got.shape == want.shape
    np.testing.assert_array_equal(stacked["decoder"]["block_scan"]["layer_2"]["DenseReluDense"]["wo"]["kernel"][2],
                                  params["decoder"]["block_2"]["layer_2"]["DenseReluDense"]["wo"]["kernel"])
    axes = t5.logical_axes(SCANNED)["encoder"]["block_scan"]["layer_0"]["SelfAttention"]["q"]["kernel"]
    assert tuple(axes) == ("layers", "embed", "joined_kv")
    back = unstack_layers(stacked, SCANS)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)


def test_scanned_t5_with_gated_deltas_matches_the_unrolled_one(setup):
    """Every S3PET-M candidate with random weights and random gates: logits and the gradients with
    respect to delta and the gates agree to float32 rounding. Measured: in float32 the attention
    LoRAs' gradients of the last encoder block differ by up to 5.3e-4 of their leaf's largest entry,
    as the unrolled model's own do between jit and op-by-op execution (1.3e-4); with the model's
    float32 casts made float64 under x64 the two agreed to 7e-13. A wrong gate, slice or position
    bias differs by O(1)."""
    params, _, candidates, batch = setup
    delta = random_delta(candidates, scale=0.3)
    gates = jnp.asarray(np.random.default_rng(6).uniform(0.1, 1.0, len(candidates)), jnp.float32)
    unrolled = logits_fn(CONFIG, candidates, (), batch)
    scanned = logits_fn(SCANNED, candidates, SCANS, batch)
    stacked = stack_layers(params, SCANS, "params")

    def loss_and_grads(logits, params):
        def loss(delta, gates):
            out = logits(params, delta, gates)
            return jnp.mean(jnp.sin(out)), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(delta, gates)

    (_, want), grads_want = loss_and_grads(unrolled, params)
    (_, got), grads_got = loss_and_grads(scanned, stacked)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(grads_got) == jax.tree.structure(grads_want)
    for got_leaf, want_leaf in zip(jax.tree.leaves(grads_got), jax.tree.leaves(grads_want)):
        scale = max(float(np.abs(want_leaf).max()), 1e-3)
        np.testing.assert_allclose(got_leaf / scale, want_leaf / scale, atol=1e-3)
    assert float(np.abs(grads_want[1]).min()) > 0  # every gate matters: every candidate acts


def test_scanned_cached_decoding_matches_the_unrolled_full_decode(setup):
    """The decode cache is stacked like the params: token-by-token logits equal the full decode's."""
    params, positions, _, batch = setup
    candidates = make_candidates(positions, [
        (f"decoder/block_{i}/layer_{j}/{name}/{proj}", "lora", {}) for i in range(4)
        for j, name in ((0, "SelfAttention"), (1, "EncDecAttention")) for proj in ("k", "v")])
    delta = random_delta(candidates, scale=0.3)
    targets, mask = batch["decoder_input_ids"], batch["attention_mask"]
    unrolled = with_deltas(t5.T5ForConditionalGeneration(CONFIG).apply, candidates, delta)
    scanned = with_deltas(t5.T5ForConditionalGeneration(SCANNED).apply, candidates, delta, scans=SCANS)
    variables = {"params": stack_layers(params, SCANS, "params")}

    encoded = unrolled({"params": params}, batch["input_ids"], mask, method="encode")
    full = unrolled({"params": params}, targets, encoded, mask, method="decode")
    _, cache = scanned(variables, targets.shape[1], encoded, mask, method="init_cache", mutable=["cache"])
    cache = cache["cache"]
    assert cache["decoder"]["block_scan"]["layer_0"]["SelfAttention"]["cached_key"].shape[0] == 4
    step = jax.jit(lambda cache, token: scanned({**variables, "cache": cache}, token, encoded, mask, decode=True,
                                                method="decode", mutable=["cache"]))
    for t in range(targets.shape[1]):
        logits, updated = step(cache, targets[:, t: t + 1])
        cache = updated["cache"]
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-4, atol=1e-5)


def test_a_scanned_search_step_matches_the_unrolled_one(setup):
    """The exact second-order step (a jax.linearize through the scan, each block rematerialised with
    the 'dots' policy, delta and Adam's moments stacked in the state) from the same state and
    batches; `unscanned` gives the state in the unscanned layout, as checkpoints hold it, and
    `scanned` takes it back."""
    params, positions, _, batch = setup
    candidates = expand([[s3.Rule(r"SelfAttention/(q|v)$", ("linear",), "lora")]], positions).candidates
    labels = jnp.tile(jnp.array([[7, 9, 1]], jnp.int32), (2, 1))
    batches = [{"input_ids": jnp.asarray(batch["input_ids"]), "attention_mask": jnp.asarray(batch["attention_mask"]),
                "labels": jnp.roll(labels, shift, axis=1)} for shift in (0, 1)]

    def loss_fn(apply_fn, params, batch, dropout_key):
        decoder_input_ids = t5.shift_right(batch["labels"], 0, 0)
        logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"], decoder_input_ids,
                          deterministic=False, rngs={"dropout": dropout_key})
        return t5.cross_entropy_loss(logits, batch["labels"])

    def one_step(config, scans, params):
        searcher = s3.Searcher(t5.T5ForConditionalGeneration(config).apply, candidates, loss_fn, budget=300,
                               total_steps=10, settings=s3.SearchSettings(estimator="second_order_exact"),
                               learning_rate=1e-2, scans=scans)
        state = searcher.step(searcher.init(jax.random.PRNGKey(0)), params, *batches)[0]
        unscanned = searcher.unscanned(state)
        assert jax.tree.structure(searcher.scanned(unscanned)) == jax.tree.structure(state)
        return state, unscanned

    _, want = one_step(CONFIG, (), params)
    stacked, got = one_step(dataclasses.replace(SCANNED, remat="dots"), SCANS, stack_layers(params, SCANS, "params"))
    assert stacked.delta["decoder"]["block_scan"]["layer_0"]["SelfAttention"]["q"]["lora"]["A"].shape[0] == 4
    assert jax.tree.structure(stacked.delta_opt_state[0].mu) == jax.tree.structure(stacked.delta)  # Adam's moments
    assert float(np.abs(want.alpha).max()) > 1e-3
    assert jax.tree.structure(got) == jax.tree.structure(want)
    np.testing.assert_allclose(got.alpha, want.alpha, rtol=1e-5, atol=1e-6)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got.delta), jax.tree.leaves(want.delta)):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)


def test_candidates_that_differ_between_scanned_layers_are_refused(setup):
    params, positions, _, batch = setup
    candidates = make_candidates(positions, [("encoder/block_1/layer_0/SelfAttention/q", "lora", {})])
    with pytest.raises(ScanError, match=r"encoder/block_scan/layer_0/SelfAttention/q: the candidates of block_1 "
                                        r"differ from those of block_0, .* or set scan_layers off"):
        with_deltas(t5.T5ForConditionalGeneration(SCANNED).apply, candidates, random_delta(candidates), scans=SCANS)
    lora_r = make_candidates(positions, [(f"encoder/block_{i}/layer_0/SelfAttention/q", "lora", {"r": r})
                                         for i, r in enumerate((1, 1, 2))])
    with pytest.raises(ScanError, match="the candidates of block_2 differ from those of block_0"):
        with_deltas(t5.T5ForConditionalGeneration(SCANNED).apply, lora_r, random_delta(lora_r), scans=SCANS)


def test_stack_layers_needs_every_layer_with_one_structure():
    scan = ScannedLayers(("enc",), "layer_", 0, 2, "layers")
    same = {"enc": {"layer_0": {"w": np.zeros(2)}, "layer_1": {"w": np.ones(2)}, "norm": np.ones(3)}, "head": 1.0}
    stacked = stack_layers(same, [scan])
    assert set(stacked["enc"]) == {"layers", "norm"} and stacked["enc"]["layers"]["w"].shape == (2, 2)
    assert stack_layers({"head": 1.0}, [scan]) == {"head": 1.0}  # no layer there: nothing to stack
    assert scan.scanned_path(("enc", "layer_1", "w")) == (("enc", "layers", "w"), 1)
    assert scan.scanned_path(("enc", "norm")) is None
    kept = ScannedLayers(("enc",), "layer_", 0, 2, "layers", kept=(("extra", "table"),))
    with_table = {"enc": {"layer_0": {"w": np.zeros(2), "extra": {"table": np.ones(4), "bias": np.ones(1)}},
                          "layer_1": {"w": np.ones(2), "extra": {"bias": np.zeros(1)}}}}
    stacked = stack_layers(with_table, [kept])
    assert set(stacked["enc"]) == {"layers", "layer_0"} and stacked["enc"]["layers"]["extra"]["bias"].shape == (2, 1)
    np.testing.assert_array_equal(stacked["enc"]["layer_0"]["extra"]["table"], np.ones(4))
    assert jax.tree.structure(unstack_layers(stacked, [kept])) == jax.tree.structure(with_table)
    assert kept.scanned_path(("enc", "layer_0", "extra", "table")) is None
    assert kept.scanned_path(("enc", "layer_0", "extra", "bias")) == (("enc", "layers", "extra", "bias"), 0)
    for broken in ({"enc": {"layer_0": {"w": np.zeros(2)}}},
                   {"enc": {"layer_0": {"w": np.zeros(2)}, "layer_1": {"v": np.zeros(2)}}}):
        with pytest.raises(ScanError, match="the delta pytree differs between the layers layer_0 ... layer_1 of enc"):
            stack_layers(broken, [scan], "delta pytree")


def test_variables_that_already_hold_a_delta_collection_are_refused(setup):
    params, positions, _, batch = setup
    candidates = make_candidates(positions, [("encoder/block_0/layer_0/SelfAttention/q", "lora", {})])
    apply = with_deltas(t5.T5ForConditionalGeneration(CONFIG).apply, candidates, random_delta(candidates))
    with pytest.raises(InjectionError, match=r"already hold the collection\(s\) delta, which with_deltas adds"):
        apply({"params": params, "delta": {}}, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
