"""GLUE rows -> BERT inputs: the pair encoding of `BertTokenizerFast`, length-grouped batches, padding buckets.

Rows come from `s3delta_jax.data` (`load_split`, `paper_splits`); the text fields are the task's own
(`task.text_fields`: one sentence, or a pair encoded as [CLS] a [SEP] b [SEP] with token types 0 / 1).

Every batch is a dict of numpy arrays with `batch_size` rows, padded to a length bucket (a multiple of
`LENGTH_MULTIPLE`, at most the maximum length), so a run compiles one program per bucket:
  input_ids, attention_mask, token_type_ids   int32 [batch, length]
  labels                                      int32 [batch] (class id) or float32 [batch] (regression score)
  weights                                     float32 [batch]: 1 for real rows, 0 for padding rows
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from s3delta_jax.data import Task

# Few buckets: each one is a compiled program per structure (MRPC pairs: median 53 tokens, 99% <= 83).
LENGTH_MULTIPLE = 64
# Training batches are drawn from groups of this many batches sorted by length, so that a batch holds
# examples of similar length (less padding) while batch order stays random.
SORT_GROUP_BATCHES = 16


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of one split, truncated to `max_length`, in row order."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids])


def is_regression(task: Task) -> bool:
    """STS-B-like tasks have no label names: the head predicts one score."""
    return not task.label_names


def encode(task: Task, rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> Encoded:
    """Tokenizes the task's text fields of every row (one text or a pair) with a Hugging Face tokenizer."""
    fields = task.text_fields
    if len(fields) not in (1, 2):
        raise ValueError(f"task {task.name!r} has {len(fields)} text fields; this example encodes one text or a pair")
    texts = [[row[field] for row in rows] for field in fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    dtype = np.float32 if is_regression(task) else np.int32
    return Encoded(
        input_ids=[np.asarray(ids, np.int32) for ids in encoded["input_ids"]],
        token_type_ids=[np.asarray(types, np.int32) for types in encoded["token_type_ids"]],
        labels=np.array([row["label"] for row in rows], dtype=dtype),
        max_length=max_length,
    )


def bucket(length: int, max_length: int) -> int:
    """The padded length: `length` rounded up to a multiple of LENGTH_MULTIPLE, at most `max_length`."""
    return min(-(-length // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, max_length)


def make_batch(encoded: Encoded, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The examples `indices` (at most `batch_size`) as one padded batch; missing rows are padding (weight 0)."""
    length = bucket(int(encoded.lengths[indices].max()), encoded.max_length)
    input_ids = np.zeros((batch_size, length), np.int32)
    token_type_ids = np.zeros_like(input_ids)
    attention_mask = np.zeros_like(input_ids)
    labels = np.zeros((batch_size,), encoded.labels.dtype)
    weights = np.zeros((batch_size,), np.float32)
    for row, example in enumerate(indices):
        n = len(encoded.input_ids[example])
        input_ids[row, :n] = encoded.input_ids[example]
        token_type_ids[row, :n] = encoded.token_type_ids[example]
        attention_mask[row, :n] = 1
        labels[row] = encoded.labels[example]
        weights[row] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels, "weights": weights}


def train_batches(encoded: Encoded, batch_size: int, seed: int | Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
    """Endless full batches: each epoch is a fresh permutation, grouped by length (see SORT_GROUP_BATCHES).

    seed: anything `np.random.default_rng` takes, e.g. (seed, stream) for independent streams of one seed.
    """
    if len(encoded) < batch_size:
        raise ValueError(f"{len(encoded)} training examples are fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    lengths = encoded.lengths
    group = batch_size * SORT_GROUP_BATCHES
    while True:
        order = rng.permutation(len(encoded))
        batches = []
        for start in range(0, len(order) - batch_size + 1, group):
            chunk = order[start: start + group]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i: i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        for b in rng.permutation(len(batches)):
            yield make_batch(encoded, batches[b], batch_size)


def eval_batches(encoded: Encoded, batch_size: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Every example once, shortest first: (example indices [<= batch_size], batch) pairs."""
    order = np.argsort(encoded.lengths, kind="stable")
    return [(order[i: i + batch_size], make_batch(encoded, order[i: i + batch_size], batch_size))
            for i in range(0, len(order), batch_size)]
