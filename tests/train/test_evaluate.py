"""Evaluation through a task head: T5's rank classification and generation against direct computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.data import compute_metrics, encode_examples, get_task, make_synthetic_task
from s3delta_jax.models import t5
from s3delta_jax.models.t5.backbone import Seq2SeqHead
from s3delta_jax.data.tokenizers import ByteTokenizer
from s3delta_jax.train.evaluate import Evaluator

CONFIG = t5.get_config("t5-small", d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
                       num_decoder_layers=1, vocab_size=259, dropout_rate=0.0)
MODEL = t5.T5ForConditionalGeneration(CONFIG)


@pytest.fixture(scope="module")
def setup():
    task = make_synthetic_task(num_train=0, num_validation=12, num_test=0)
    examples = task.examples(task.row_generator("validation"))
    tokenizer = ByteTokenizer()
    encoded = encode_examples(task, examples, tokenizer)
    params = t5.init_params(CONFIG, jax.random.PRNGKey(3))
    return task, examples, tokenizer, encoded, params


def make_evaluator(task, tokenizer, method):
    head = Seq2SeqHead(CONFIG, task, tokenizer, method, max_decode_length=6)
    return Evaluator(task, head, batch_size=5, apply_for=lambda variables: MODEL.apply)


def test_rank_predicts_the_label_with_the_highest_likelihood(setup):
    task, examples, tokenizer, encoded, params = setup
    metrics, predictions = make_evaluator(task, tokenizer, "rank")(params, {}, examples, encoded)
    apply = jax.jit(MODEL.apply)  # one example and one target at a time: compiled once per pair of lengths
    expected = []
    for example in examples:
        source = jnp.asarray([tokenizer.encode(example.source)])
        scores = []
        for target in task.target_strings():
            labels = jnp.asarray([tokenizer.encode(target)])
            logits = apply({"params": params}, source, jnp.ones_like(source), t5.shift_right(labels, 0, 0))
            log_probs = jax.nn.log_softmax(logits[0], axis=-1)
            scores.append(float(jnp.take_along_axis(log_probs, labels[0][:, None], axis=-1).sum()))
        expected.append(task.target_strings()[int(np.argmax(scores))])
    assert predictions == expected
    assert metrics == compute_metrics(task, expected, examples)


def test_generate_predicts_the_greedy_decoding(setup):
    task, examples, tokenizer, encoded, params = setup
    _, predictions = make_evaluator(task, tokenizer, "generate")(params, {}, examples, encoded)
    decode = jax.jit(lambda source: t5.greedy_decode(MODEL.apply, params, source, jnp.ones_like(source), 6, CONFIG))
    expected = []
    for example in examples:
        source = jnp.asarray([tokenizer.encode(example.source)])
        tokens = decode(source)
        expected.append(tokenizer.decode(np.asarray(tokens[0])))
    assert predictions == expected


def test_rank_needs_a_label_set():
    tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="no fixed label set"):
        Seq2SeqHead(CONFIG, get_task("superglue-record"), tokenizer, "rank", 6)
    with pytest.raises(ValueError, match="'beam' is not one of generate, rank"):
        Seq2SeqHead(CONFIG, get_task("mrpc"), tokenizer, "beam", 6)
