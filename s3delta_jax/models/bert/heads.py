"""Sequence classification and regression on a BERT-family encoder: a pooled Dense head, trained in
every run and outside the budget (the Searcher's and the Retrainer's `extra`).

The head pools the encoder's last hidden state, by the attention-masked mean of the tokens (as
sentence-transformers pools all-MiniLM-L6-v2) or by the first ([CLS] / <s>) token, applies dropout
and one Dense layer: class logits f32[B, C], or one score f32[B, 1] for regression (STS-B).
Losses: mean cross-entropy, or mean squared error, over the real rows of a batch (`weights`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s3delta_jax.data import Task
from s3delta_jax.errors import UserError
from s3delta_jax.models.backbone import ApplyFn, Batch, Params, TaskHead
from s3delta_jax.models.dropout import Dropout

POOLINGS = ("mean", "cls")


class HeadError(UserError, ValueError):
    """A head setting or task that an encoder cannot serve."""


class PooledClassifier(nn.Module):
    """Pooling, dropout, Dense: hidden f32[B, L, H], attention_mask int[B, L] -> f32[B, num_outputs]."""

    num_outputs: int
    pooling: str
    dropout_rate: float

    @nn.compact
    def __call__(self, hidden: jax.Array, attention_mask: jax.Array, deterministic: bool) -> jax.Array:
        if self.pooling == "mean":
            mask = attention_mask[..., None].astype(hidden.dtype)
            pooled = (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        else:
            pooled = hidden[:, 0]
        pooled = Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        return nn.Dense(self.num_outputs, name="classifier")(pooled.astype(jnp.float32))


def is_regression(task: Task) -> bool:
    """STS-B-like tasks have no label names: the head predicts one score."""
    return not task.label_names


class ClassifierHead(TaskHead):
    """`extra` = the PooledClassifier's params; batches carry input_ids, attention_mask,
    token_type_ids [B, L], labels [B] and weights [B] (data.pipeline)."""

    predict_inputs = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, task: Task, hidden_size: int, pooling: str, dropout_rate: float):
        if pooling not in POOLINGS:
            raise HeadError(f"model.pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.task, self.hidden_size = task, hidden_size
        self.regression = is_regression(task)
        num_outputs = 1 if self.regression else len(task.label_names)
        self.classifier = PooledClassifier(num_outputs, pooling, dropout_rate)

    def init_extra(self, key: jax.Array) -> Params:
        hidden = jnp.zeros((1, 1, self.hidden_size), jnp.float32)
        return self.classifier.init(key, hidden, jnp.ones((1, 1), jnp.int32), deterministic=True)["params"]

    def outputs(self, apply_fn: ApplyFn, params: Params, batch: Batch, extra: Params,
                dropout_key: jax.Array | None) -> jax.Array:
        """Head outputs f32[B, num_outputs]; dropout is on when `dropout_key` is given (training)."""
        train = dropout_key is not None
        encoder_key, head_key = jax.random.split(dropout_key) if train else (None, None)
        hidden = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          deterministic=not train, rngs={"dropout": encoder_key} if train else None)
        return self.classifier.apply({"params": extra}, hidden, batch["attention_mask"], deterministic=not train,
                                     rngs={"dropout": head_key} if train else None)

    def loss(self, apply_fn: ApplyFn, params: Params, batch: Batch, dropout_key: jax.Array,
             extra: Params | None = None) -> jax.Array:
        outputs = self.outputs(apply_fn, params, batch, extra, dropout_key)
        if self.regression:
            per_row = jnp.square(outputs[:, 0] - batch["labels"])
        else:
            per_row = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["labels"])
        weights = batch["weights"]
        return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    def predict(self, apply_fn: ApplyFn, params: Params, batch: Batch, extra: Params | None = None) -> jax.Array:
        """The predicted class int32[B], or the score f32[B]."""
        outputs = self.outputs(apply_fn, params, batch, extra, None)
        return outputs[:, 0] if self.regression else jnp.argmax(outputs, axis=-1).astype(jnp.int32)

    def predictions(self, outputs: np.ndarray) -> list[str]:
        """Class ids as the task's target strings ("0", "1", ...), scores as exact decimals."""
        if self.regression:
            return [repr(float(score)) for score in outputs]
        return [str(int(label)) for label in outputs]
