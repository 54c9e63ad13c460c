"""T5 losses, scoring and greedy decoding, written against an `apply_fn` with `model.apply`'s signature
(so that the same functions run on the plain model and on one with deltas injected)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from s3delta_jax.models.t5.model import ApplyFn, Array, Params, T5Config

IGNORE_INDEX = -100


def shift_right(labels: Array, decoder_start_token_id: int, pad_id: int) -> Array:
    """Decoder inputs from labels [b, t]: prepend the start token, drop the last, -100 -> pad."""
    labels = jnp.asarray(labels)
    start = jnp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype)
    shifted = jnp.concatenate([start, labels[:, :-1]], axis=1)
    return jnp.where(shifted == IGNORE_INDEX, pad_id, shifted)


def _target_log_probs(logits: Array, labels: Array) -> tuple[Array, Array]:
    """(log p(label) [b, t] with 0 at ignored positions, mask [b, t] of labels != -100)."""
    valid = labels != IGNORE_INDEX
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, 0.0), valid


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """Hugging Face's loss: mean token cross-entropy over labels != -100. logits [b, t, V], labels [b, t]."""
    log_probs, valid = _target_log_probs(logits, labels)
    return -log_probs.sum() / jnp.maximum(valid.sum(), 1)


def sequence_log_likelihood(
    apply_fn: ApplyFn,
    params: Params,
    input_ids: Array,
    attention_mask: Array,
    labels: Array,
    decoder_start_token_id: int = 0,
    pad_id: int = 0,
) -> Array:
    """Sum of log p(target token) per example, f32 [b]; labels [b, t] padded with -100.

    `apply_fn` is `model.apply` or a wrapper with the same signature (e.g. injecting deltas).
    """
    decoder_input_ids = shift_right(labels, decoder_start_token_id, pad_id)
    logits = apply_fn({"params": params}, input_ids, attention_mask, decoder_input_ids)
    return _target_log_probs(logits, labels)[0].sum(axis=-1)


def greedy_decode(
    apply_fn: ApplyFn,
    params: Params,
    input_ids: Array,
    attention_mask: Array,
    max_length: int,
    config: T5Config,
) -> Array:
    """Greedy decoding with a KV cache: int32 [b, max_length] generated tokens (no start token).

    Stops early once every row has emitted EOS; after its EOS a row is filled with pad.
    Jittable with `max_length` and `config` static. `apply_fn` is `model.apply` or a wrapper
    with the same signature.
    """
    batch = input_ids.shape[0]
    encoded = apply_fn({"params": params}, input_ids, attention_mask, method="encode")
    _, variables = apply_fn(
        {"params": params}, max_length, encoded, attention_mask, method="init_cache", mutable=["cache"]
    )

    def not_done(state):
        step, _, _, _, finished = state
        return (step < max_length) & ~jnp.all(finished)

    def step_fn(state):
        step, tokens, last, cache, finished = state
        logits, variables = apply_fn(
            {"params": params, "cache": cache}, last, encoded, attention_mask,
            decode=True, method="decode", mutable=["cache"],
        )
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        token = jnp.where(finished, config.pad_token_id, token)
        tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        finished = finished | (token == config.eos_token_id)
        return step + 1, tokens, token[:, None], variables["cache"], finished

    state = (
        jnp.array(0, jnp.int32),
        jnp.full((batch, max_length), config.pad_token_id, jnp.int32),
        jnp.full((batch, 1), config.decoder_start_token_id, jnp.int32),
        variables["cache"],
        jnp.zeros((batch,), bool),
    )
    return lax.while_loop(not_done, step_fn, state)[1]
