"""Parity of the Flax T5 with Hugging Face's PyTorch T5, both families, padded inputs, float32."""

from __future__ import annotations

import collections
import dataclasses
import functools
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from t5_reference import TINY, hf_forward
from transformers.models.t5.modeling_t5 import T5Attention as HFAttention
from transformers.models.t5.modeling_t5 import T5LayerNorm as HFLayerNorm

from s3delta_jax.models import t5
from s3delta_jax.models.t5 import convert
from s3delta_jax.models.t5.convert import hf_name

T5X_AXES = {"vocab", "embed", "joined_kv", "heads", "kv", "mlp", "relpos_buckets"}
GENERATE_LENGTH = 12  # HF max_length, counting the decoder start token


@pytest.fixture(scope="module")
def loaded(hf_checkpoint):
    """(model, params) of the checkpoint."""
    config, params = convert.load_checkpoint(str(hf_checkpoint.directory))
    return t5.T5ForConditionalGeneration(config), params


def _hf_dotted(path: tuple[str, ...]) -> str:
    return re.sub(r"(block|layer)_(\d+)", r"\1.\2", ".".join(path))


def test_module_tree_mirrors_hf_names(hf_checkpoint, loaded):
    model, params = loaded
    ours = {hf_name(path) for path in flax.traverse_util.flatten_dict(params)}
    tied_copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if hf_checkpoint.tied:
        tied_copies.add("lm_head.weight")
    assert ours == set(hf_checkpoint.model.state_dict()) - tied_copies
    assert "relative_attention_bias" in params["encoder"]["block_0"]["layer_0"]["SelfAttention"]
    assert "relative_attention_bias" not in params["decoder"]["block_1"]["layer_0"]["SelfAttention"]
    assert len(params["encoder"]) == 3 + 1 and len(params["decoder"]) == 2 + 1  # blocks + final_layer_norm
    assert t5.count_params(model.config) == sum(p.numel() for p in hf_checkpoint.model.parameters())


def test_named_blocks_return_one_array(loaded, padded_batch):
    """SelfAttention / EncDecAttention / DenseReluDense outputs are single [b, l, d] arrays (interceptable)."""
    model, params = loaded
    outputs: dict[str, tuple] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = context.module.name
        if context.method_name == "__call__" and name in ("SelfAttention", "EncDecAttention", "DenseReluDense"):
            outputs[_hf_dotted(context.module.path)] = out.shape
        return out

    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.apply, **batch), {"params": params})
    assert len(outputs) == 3 * 2 + 2 * 3
    assert outputs["encoder.block.2.layer.1.DenseReluDense"] == (3, 25, TINY["d_model"])
    assert outputs["decoder.block.1.layer.1.EncDecAttention"] == (3, 9, TINY["d_model"])


def test_logits_match_hf(hf_checkpoint, loaded, padded_batch):
    model, params = loaded
    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    expected = hf_forward(hf_checkpoint.model, batch).logits.numpy()
    logits = jax.jit(model.apply)({"params": params}, **batch)
    assert logits.shape == (3, 9, TINY["vocab_size"])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)


def test_loss_and_sequence_log_likelihood_match_hf(hf_checkpoint, loaded, padded_batch):
    model, params = loaded
    ids, mask, labels = padded_batch["input_ids"], padded_batch["attention_mask"], padded_batch["labels"]
    out = hf_forward(hf_checkpoint.model, dict(input_ids=ids, attention_mask=mask, labels=labels))
    log_probs = torch.log_softmax(out.logits, -1)
    picked = torch.gather(log_probs, -1, torch.as_tensor(np.maximum(labels, 0))[..., None])[..., 0]
    expected_scores = (picked * torch.as_tensor(labels != -100)).sum(-1).numpy()

    @jax.jit
    def loss_and_scores(params):
        config = model.config
        decoder_input_ids = t5.shift_right(labels, config.decoder_start_token_id, config.pad_token_id)
        logits = model.apply({"params": params}, ids, mask, decoder_input_ids)
        scores = t5.sequence_log_likelihood(model.apply, params, ids, mask, labels)
        return decoder_input_ids, t5.cross_entropy_loss(logits, labels), scores

    decoder_input_ids, loss, scores = loss_and_scores(params)
    np.testing.assert_array_equal(decoder_input_ids, hf_checkpoint.model._shift_right(torch.as_tensor(labels)).numpy())
    assert abs(float(loss) - out.loss.item()) <= 1e-5
    assert scores.dtype == jnp.float32 and scores.shape == (3,)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-5, atol=1e-5)


def _hf_greedy(model, ids, mask, eos_token_id):
    """HF greedy tokens without the leading decoder start token, padded to GENERATE_LENGTH - 1."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), do_sample=False, num_beams=1,
            max_length=GENERATE_LENGTH, min_length=0, eos_token_id=eos_token_id, pad_token_id=0,
        ).numpy()
    assert (out[:, 0] == 0).all()
    return np.pad(out[:, 1:], ((0, 0), (0, GENERATE_LENGTH - out.shape[1])))


def test_greedy_decode_matches_hf_generate(hf_checkpoint, loaded, padded_batch):
    model, params = loaded
    ids, mask = padded_batch["input_ids"], padded_batch["attention_mask"]
    # EOS := a token that row 0 emits mid-sequence, so one row stops early (then pads) and others go on.
    row = _hf_greedy(hf_checkpoint.model, ids, mask, model.config.eos_token_id)[0]
    position = next(p for p in range(1, len(row)) if row[p] not in row[:p] and row[p] != 0)
    config = dataclasses.replace(model.config, eos_token_id=int(row[position]))
    expected = _hf_greedy(hf_checkpoint.model, ids, mask, config.eos_token_id)
    assert (expected[0, position + 1 :] == 0).all() and expected[1:, position + 1 :].any()

    decode = jax.jit(lambda p, i, m: t5.greedy_decode(model.apply, p, i, m, GENERATE_LENGTH - 1, config))
    tokens = np.asarray(decode(params, ids, mask))
    assert tokens.dtype == np.int32 and tokens.shape == (3, GENERATE_LENGTH - 1)
    np.testing.assert_array_equal(tokens, expected)


@pytest.mark.parametrize("hf_checkpoint", ["relu_tied"], indirect=True)
def test_greedy_decode_uses_the_given_apply_fn(loaded, padded_batch):
    """Every step goes through `apply_fn`; a wrapper that intercepts the logits (as delta injection
    intercepts modules) forces token 7 everywhere."""
    model, params = loaded

    def force_token(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        return out.at[..., 7].add(1e4) if context.method_name == "logits" else out

    def apply_fn(*args, **kwargs):
        with nn.intercept_methods(force_token):
            return model.apply(*args, **kwargs)

    decode = jax.jit(lambda p, i, m: t5.greedy_decode(apply_fn, p, i, m, 4, model.config))
    tokens = decode(params, padded_batch["input_ids"], padded_batch["attention_mask"])
    np.testing.assert_array_equal(tokens, np.full((3, 4), 7))


@pytest.mark.parametrize("hf_checkpoint", ["gated_untied"], indirect=True)  # family-independent
def test_cached_decoding_matches_full_forward(loaded, padded_batch):
    model, params = loaded
    ids, mask, targets = padded_batch["input_ids"], padded_batch["attention_mask"], padded_batch["decoder_input_ids"]
    variables = {"params": params}

    @jax.jit
    def encode_and_decode(variables):
        encoded = model.apply(variables, ids, mask, method="encode")
        return encoded, model.apply(variables, targets, encoded, mask, method="decode")

    encoded, full = encode_and_decode(variables)
    init_cache = jax.jit(functools.partial(model.apply, method="init_cache", mutable=["cache"]), static_argnums=1)
    _, cache = init_cache(variables, targets.shape[1], encoded, mask)
    step = jax.jit(functools.partial(model.apply, decode=True, method="decode", mutable=["cache"]))
    steps = []
    for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, targets.shape[1])]:  # one chunk, then tokens
        logits, cache = step({**variables, **cache}, targets[:, start:stop], encoded, mask)
        steps.append(logits)
    assert int(cache["cache"]["decoder"]["block_1"]["layer_0"]["SelfAttention"]["cache_index"]) == targets.shape[1]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hf_checkpoint", ["gated_untied"], indirect=True)  # same sites in both families
def test_dropout_sites_match_hf(hf_checkpoint, loaded, padded_batch):
    """Every dropout (modules and attention weights) is applied where and as HF applies it in training."""
    model, params = loaded
    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    hf_sites: collections.Counter = collections.Counter()
    hooks = []
    for name, module in hf_checkpoint.model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            site = (name, module.p)
        elif isinstance(module, HFAttention):  # functional dropout on the attention weights
            site = (f"{name}.dropout", module.dropout)
        else:
            continue
        hooks.append(module.register_forward_hook(lambda *_, site=site: hf_sites.update([site])))
    hf_checkpoint.model.train()
    try:
        hf_forward(hf_checkpoint.model, batch)
    finally:
        hf_checkpoint.model.eval()
        for hook in hooks:
            hook.remove()

    our_sites: collections.Counter = collections.Counter()
    deterministic_flags = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout):
            our_sites.update([(_hf_dotted(context.module.path), context.module.rate)])
            deterministic_flags.add(kwargs["deterministic"])
        return next_fun(*args, **kwargs)

    def train_logits(params, batch, rng):
        with nn.intercept_methods(record):
            return model.apply({"params": params}, **batch, deterministic=False, rngs={"dropout": rng})

    jax.eval_shape(train_logits, params, batch, jax.random.key(0))  # tracing records every call
    assert our_sites == hf_sites and deterministic_flags == {False}
    assert sum(hf_sites.values()) == 2 * 2 + 3 * (2 + 2) + 2 * (3 + 3)  # stacks, encoder and decoder blocks


def test_relative_position_bucket_matches_hf():
    relative_position = np.arange(-400, 400)
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20), (64, 300)):
            expected = HFAttention._relative_position_bucket(
                torch.as_tensor(relative_position), bidirectional, num_buckets, max_distance
            ).numpy()
            buckets = t5.relative_position_bucket(
                jnp.asarray(relative_position), bidirectional, num_buckets, max_distance
            )
            np.testing.assert_array_equal(buckets, expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_hf(dtype):
    rng = np.random.default_rng(1)
    x, scale = rng.normal(size=(2, 5, 16)).astype(np.float32), rng.uniform(0.5, 1.5, 16).astype(np.float32)
    reference = HFLayerNorm(16, eps=1e-6)
    reference.weight.data = torch.as_tensor(scale).to(torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32)
    with torch.no_grad():
        expected = reference(torch.as_tensor(x)).float().numpy()
    norm = t5.T5LayerNorm(1e-6, dtype=dtype, param_dtype=dtype)
    out = norm.apply({"params": {"scale": jnp.asarray(scale, dtype)}}, jnp.asarray(x))
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=1e-6, atol=1e-6)


def test_every_param_has_t5x_logical_axes(loaded):
    model, params = loaded
    specs = flax.traverse_util.flatten_dict(t5.logical_axes(model.config))
    shapes = flax.traverse_util.flatten_dict(params)
    assert specs.keys() == shapes.keys()
    for path, spec in specs.items():
        assert len(spec) == shapes[path].ndim and set(spec) <= T5X_AXES, path
    assert tuple(specs[("shared", "embedding")]) == ("vocab", "embed")
    assert tuple(specs[("decoder", "block_1", "layer_2", "DenseReluDense", "wo", "kernel")]) == ("mlp", "embed")
    bias_table = ("encoder", "block_0", "layer_0", "SelfAttention", "relative_attention_bias", "embedding")
    assert tuple(specs[bias_table]) == ("relpos_buckets", "heads")
