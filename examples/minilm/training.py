"""Search, re-training and evaluation of delta structures in a frozen BERT with an always-trainable head.

The task model is `head(encoder(x))`: the frozen BERT encoder carries the delta modules, and a small
head (masked mean pooling, dropout, one Dense) maps it to class logits or a regression score. The head
is trained in every run and is not part of the parameter budget.

The head during search. `s3.Searcher` takes always-trained parameters outside the budget as `extra`:
`searcher.init(key, extra=head)`, and its loss receives them as a fifth argument. The head is thus an
inner-problem variable trained with delta (same optimizer, and moved by the hypergradient's virtual
step), never gated and never selected.

Re-training. A structure (searched, random or manual) is re-trained as the library suggests:
`s3.with_deltas(model.apply, chosen, s3.init_delta(key, chosen))`, no gates, fresh deltas and a fresh
head, AdamW on both. The compiled step and evaluation of a structure are cached by its candidates, so
a baseline compiles once for all seeds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import s3delta_jax.search as s3
from examples.minilm import data
from examples.minilm.bert import BertModel
from s3delta_jax.data import Task, compute_metrics, primary_metric

Params = Any
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long and how hard to train.

    Attributes:
      seeds: one search, one random structure and one run of each baseline per seed.
      batch_size: rows per batch (search: per D_delta and per D_alpha batch).
      max_length: tokens per example (pair truncation by the tokenizer).
      search_steps: search steps (each sees one D_delta and one D_alpha batch).
      retrain_steps: optimizer steps of every re-training run.
      eval_every: re-training steps between evaluations on the validation split; the test metrics
        reported are those of the evaluation with the best validation primary metric.
      learning_rate: AdamW learning rate of delta and head (search and re-training), decaying linearly to 0.
      alpha_learning_rate: AdamW learning rate of the structure parameters alpha (the reference's 0.1).
      estimator: the hypergradient estimator (s3.SearchSettings).
      backbone_dropout: dropout inside the encoder during training (the head always has dropout).
    """

    seeds: tuple[int, ...]
    batch_size: int
    max_length: int
    search_steps: int
    retrain_steps: int
    eval_every: int
    learning_rate: float
    alpha_learning_rate: float = 0.1
    estimator: str = "second_order_fd"
    backbone_dropout: bool = True


HEAD_DROPOUT = 0.1
CLIP_NORM = s3.SearchSettings().clip_norm


class ClassificationHead(nn.Module):
    """Masked mean pooling (as sentence-transformers pools all-MiniLM-L6-v2), dropout, Dense."""

    num_outputs: int

    @nn.compact
    def __call__(self, hidden: jax.Array, attention_mask: jax.Array, deterministic: bool) -> jax.Array:
        """hidden f32[B, L, H], attention_mask int[B, L] -> f32[B, num_outputs]."""
        mask = attention_mask[..., None].astype(hidden.dtype)
        pooled = (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        pooled = nn.Dropout(HEAD_DROPOUT)(pooled, deterministic=deterministic)
        return nn.Dense(self.num_outputs, name="classifier")(pooled)


def adamw_linear_decay(learning_rate: float, steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (no weight decay) with the learning rate decaying linearly to 0."""
    schedule = optax.linear_schedule(learning_rate, 0.0, max(steps, 1))
    return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adamw(schedule, weight_decay=0.0))


@dataclasses.dataclass(frozen=True)
class TaskModel:
    """The frozen encoder with its search space, and the head of one task."""

    model: BertModel
    candidates: Sequence[s3.Candidate]
    num_outputs: int
    backbone_dropout: bool

    @property
    def head(self) -> ClassificationHead:
        return ClassificationHead(self.num_outputs)

    @property
    def regression(self) -> bool:
        return self.num_outputs == 1

    def init_head(self, key: jax.Array) -> Params:
        hidden = jnp.zeros((1, 1, self.model.config.hidden_size))
        return self.head.init(key, hidden, jnp.ones((1, 1), jnp.int32), deterministic=True)["params"]

    def outputs(self, apply_fn: Callable[..., Any], backbone: Params, head: Params, batch: Batch,
                key: jax.Array | None) -> jax.Array:
        """Head outputs f32[B, num_outputs]; dropout is on when `key` is given (training)."""
        train = key is not None
        encoder_key, head_key = jax.random.split(key) if train else (None, None)
        hidden = apply_fn({"params": backbone}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          deterministic=not (train and self.backbone_dropout),
                          rngs={"dropout": encoder_key} if train else None)
        return self.head.apply({"params": head}, hidden, batch["attention_mask"], deterministic=not train,
                               rngs={"dropout": head_key} if train else None)

    def loss(self, outputs: jax.Array, batch: Batch) -> jax.Array:
        """Mean cross-entropy (or squared error for regression) over the real rows of the batch."""
        if self.regression:
            per_row = jnp.square(outputs[:, 0] - batch["labels"])
        else:
            per_row = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["labels"])
        return jnp.sum(per_row * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)

    def search_loss(self, apply_fn: Callable[..., Any], backbone: Params, batch: Batch, key: jax.Array,
                    head: Params) -> jax.Array:
        """The Searcher's loss_fn, with the head as its always-trained `extra`."""
        return self.loss(self.outputs(apply_fn, backbone, head, batch, key), batch)


def same_length(a: Batch, b: Batch) -> tuple[Batch, Batch]:
    """Pads the token arrays of two batches to the longer length (one compiled search step per bucket)."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(batch: Batch) -> Batch:
        extra = length - batch["input_ids"].shape[1]
        tokens = {k: np.pad(batch[k], ((0, 0), (0, extra))) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return {**batch, **tokens}

    return pad(a), pad(b)


class HeadSearch:
    """`s3.Searcher` over the encoder's deltas with the head as `extra`.

    Build it once per task and budget: its jitted step is reused by every seed.
    """

    def __init__(self, task_model: TaskModel, budget: float, schedule: Schedule):
        self.task_model = task_model
        self.schedule = schedule
        self.searcher = s3.Searcher(
            task_model.model.apply, task_model.candidates, task_model.search_loss, budget=budget,
            total_steps=schedule.search_steps, settings=s3.SearchSettings(estimator=schedule.estimator),
            learning_rate=schedule.learning_rate, alpha_learning_rate=schedule.alpha_learning_rate,
        )

    def run(self, backbone: Params, d_delta: Iterator[Batch], d_alpha: Iterator[Batch], seed: int,
            log: Callable[[str], None] = print) -> s3.SearchState:
        """`search_steps` steps from fresh deltas, alpha = 0 and a fresh head (in `state.extra`)."""
        state_key, head_key = jax.random.split(jax.random.key(seed))
        state = self.searcher.init(state_key, extra=self.task_model.init_head(head_key))
        start = time.time()
        for step in range(self.schedule.search_steps):
            batch_delta, batch_alpha = same_length(next(d_delta), next(d_alpha))
            state, metrics = self.searcher.step(state, backbone, batch_delta, batch_alpha)
            if (step + 1) % max(self.schedule.search_steps // 5, 1) == 0:
                log(f"  search step {step + 1}/{self.schedule.search_steps}: loss_delta {float(metrics['loss_delta']):.4f} "
                    f"loss_alpha {float(metrics['loss_alpha']):.4f} ({time.time() - start:.0f} s)")
        return state


Structure = tuple[s3.Candidate, ...]


def structure_key(chosen: Structure) -> tuple[str, ...]:
    """A hashable name of a structure (candidates hold dicts, so they are not hashable themselves)."""
    return tuple(c.name for c in chosen)


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """One evaluation split: its examples (for the metrics) and its batches, shortest first."""

    examples: list[Any]
    batches: list[tuple[np.ndarray, Batch]]
    size: int

    @classmethod
    def of(cls, task: Task, rows: Sequence[dict[str, Any]], encoded: data.Encoded, batch_size: int) -> EvalSplit:
        return cls(task.examples(rows), data.eval_batches(encoded, batch_size), len(encoded))


class Evaluator:
    """Task metrics of a structure's deltas on a split (one compiled program per structure and length)."""

    def __init__(self, task_model: TaskModel, task: Task):
        self.task_model = task_model
        self.task = task
        self._compiled: dict[tuple[str, ...], Callable[..., jax.Array]] = {}

    def _outputs(self, chosen: Structure) -> Callable[..., jax.Array]:
        key = structure_key(chosen)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(lambda backbone, delta, head, batch: self.task_model.outputs(
                s3.with_deltas(self.task_model.model.apply, chosen, delta), backbone, head, batch, None))
        return self._compiled[key]

    def predictions(self, backbone: Params, chosen: Structure, delta: Params, head: Params, split: EvalSplit) -> list[str]:
        """One prediction string per example, in row order (class id, or the formatted score)."""
        outputs = np.zeros((split.size, self.task_model.num_outputs), np.float32)
        for indices, batch in split.batches:
            outputs[indices] = np.asarray(self._outputs(chosen)(backbone, delta, head, batch))[: len(indices)]
        if self.task_model.regression:
            return [self.task.format_score(float(score)) for score in outputs[:, 0]]
        return [str(label) for label in outputs.argmax(axis=1)]

    def metrics(self, backbone: Params, chosen: Structure, delta: Params, head: Params, split: EvalSplit) -> dict[str, float]:
        return compute_metrics(self.task, self.predictions(backbone, chosen, delta, head, split), split.examples)


class Retrainer:
    """Re-trains a structure (the chosen candidates alone, no gates) from fresh deltas and a fresh head."""

    def __init__(self, task_model: TaskModel, schedule: Schedule):
        self.task_model = task_model
        self.schedule = schedule
        self.optimizer = adamw_linear_decay(schedule.learning_rate, schedule.retrain_steps)
        self._compiled: dict[tuple[str, ...], Callable[..., Any]] = {}

    def _step(self, chosen: Structure) -> Callable[..., Any]:
        """The jitted `step(trainable, opt_state, backbone, batch, key) -> (trainable, opt_state, loss)`."""
        key = structure_key(chosen)
        if key in self._compiled:
            return self._compiled[key]

        def step(trainable, opt_state, backbone, batch, key):
            def loss_fn(t):
                apply_fn = s3.with_deltas(self.task_model.model.apply, chosen, t["delta"])
                return self.task_model.loss(self.task_model.outputs(apply_fn, backbone, t["head"], batch, key), batch)

            loss, grads = jax.value_and_grad(loss_fn)(trainable)
            updates, opt_state = self.optimizer.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        self._compiled[key] = jax.jit(step)
        return self._compiled[key]

    def run(self, backbone: Params, chosen: Sequence[s3.Candidate], train: Iterator[Batch], evaluator: Evaluator,
            validation: EvalSplit, test: EvalSplit, seed: int) -> dict[str, dict[str, float]]:
        """{"validation": best validation metrics, "test": test metrics at that evaluation}."""
        chosen = tuple(chosen)
        step_fn = self._step(chosen)
        delta_key, head_key, step_key = jax.random.split(jax.random.key(seed), 3)
        trainable = {"delta": s3.init_delta(delta_key, chosen), "head": self.task_model.init_head(head_key)}
        opt_state = self.optimizer.init(trainable)
        primary = primary_metric(evaluator.task)
        best: dict[str, dict[str, float]] = {}
        for step in range(self.schedule.retrain_steps):
            trainable, opt_state, _ = step_fn(trainable, opt_state, backbone, next(train), jax.random.fold_in(step_key, step))
            if (step + 1) % self.schedule.eval_every == 0 or step + 1 == self.schedule.retrain_steps:
                scores = evaluator.metrics(backbone, chosen, trainable["delta"], trainable["head"], validation)
                if not best or scores[primary] > best["validation"][primary]:
                    best = {"validation": scores,
                            "test": evaluator.metrics(backbone, chosen, trainable["delta"], trainable["head"], test)}
        return best
