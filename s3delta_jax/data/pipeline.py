"""Batches for training and evaluation: tokenization, bucketed padding, resumable shuffling, and
per-host slices of each global batch.

Every batch is a dict of numpy arrays with `batch_size` rows. Text-to-text examples (T5), int32
[rows, length]:
  input_ids               source token ids, EOS last, padded with the tokenizer's pad id (0)
  attention_mask          1 on source tokens, 0 on padding
  labels                  target token ids, EOS last, padded with -100 (ignored by the loss)
  decoder_attention_mask  1 on target tokens, 0 on padding
Classification / regression examples (encoders): input_ids and attention_mask as above, and
  token_type_ids          int32 [rows, length]: segment ids of a text pair (0 first, 1 second)
  labels                  int32 [rows] class ids, or float32 [rows] regression scores
  weights                 float32 [rows]: 1 for real rows, 0 for padding rows
Lengths are padded up to a bucket (powers of two from `min_bucket`, below N then multiples of N
with `pad_multiple` N > 0; capped by the maximum length), chosen from the whole global batch so that
every host sees the same shapes; a run therefore compiles at most len(source buckets) x len(target
buckets) shapes. Batches always have `batch_size` rows: a
short final batch is filled with padding rows (all masks 0, labels -100, weight 0), which the losses
ignore. Training batches can be grouped by length (`group_batches` K > 0, as Hugging Face Trainer's
group_by_length): each epoch's shuffled order is cut into runs of K batches whose examples are sorted
by length, longest first, so a batch pads to little more than its own examples.

With several hosts (`process_count` P), host k gets rows [k B/P, (k+1) B/P) of every global batch of
B rows; all hosts walk the same global order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s3delta_jax.data.tasks import Example, Task
from s3delta_jax.data.tokenizers import Tokenizer

IGNORE_LABEL = -100
DEFAULT_MIN_BUCKET = 8


@dataclass(frozen=True)
class EncodedExamples:
    """Token ids of examples, truncated, in example order; either text-to-text or labelled.

    source_ids: one int32 array [length_i] per example (EOS last for T5; [CLS] a [SEP] b [SEP] for BERT).
    pad_id: the tokenizer's pad id, which fills input_ids.
    target_ids / max_target_length: text-to-text targets, one int32 array per example, EOS last.
    token_type_ids: segment ids, one int32 array per example like source_ids (encoders), or None.
    class_labels: int32 [examples] class ids or float32 [examples] scores (encoders), or None.
    Exactly one of target_ids and class_labels is set.
    """

    source_ids: list[np.ndarray]
    max_source_length: int
    pad_id: int
    target_ids: list[np.ndarray] | None = None
    max_target_length: int = 0
    token_type_ids: list[np.ndarray] | None = None
    class_labels: np.ndarray | None = None

    def __post_init__(self):
        if (self.target_ids is None) == (self.class_labels is None):
            raise ValueError("encoded examples need exactly one of target_ids and class_labels")
        for name in ("target_ids", "token_type_ids", "class_labels"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.source_ids):
                raise ValueError(f"{len(self.source_ids)} sources for {len(value)} {name}")

    def __len__(self) -> int:
        return len(self.source_ids)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(source lengths, target lengths), int arrays [num examples]; target lengths are 0 for
        labelled examples."""
        sources = np.array([len(ids) for ids in self.source_ids], dtype=np.int64)
        if self.target_ids is None:
            return sources, np.zeros_like(sources)
        return sources, np.array([len(ids) for ids in self.target_ids], dtype=np.int64)


def truncate(ids: Sequence[int], max_length: int) -> list[int]:
    """`ids` (ending with EOS) cut to `max_length` tokens, keeping the EOS last."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    ids = list(ids)
    return ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:]


def encode_examples(
    task: Task, examples: Sequence[Example], tokenizer: Tokenizer,
    max_source_length: int | None = None, max_target_length: int | None = None,
) -> EncodedExamples:
    """Tokenizes and truncates sources and targets; the maximum lengths default to the task's
    (`task.max_source_length`, `task.max_target_length(tokenizer)`)."""
    max_source_length = max_source_length or task.max_source_length
    max_target_length = max_target_length or task.max_target_length(tokenizer)
    cache: dict[tuple[str, int], np.ndarray] = {}  # ReCoRD repeats a source once per answer

    def encode(text: str, max_length: int) -> np.ndarray:
        if (text, max_length) not in cache:
            cache[text, max_length] = np.asarray(truncate(tokenizer.encode(text), max_length), dtype=np.int32)
        return cache[text, max_length]

    return EncodedExamples(
        source_ids=[encode(e.source, max_source_length) for e in examples],
        max_source_length=max_source_length,
        pad_id=tokenizer.pad_id,
        target_ids=[encode(e.target, max_target_length) for e in examples],
        max_target_length=max_target_length,
    )


def bucket_lengths(max_length: int, min_bucket: int = DEFAULT_MIN_BUCKET, pad_multiple: int = 0) -> tuple[int, ...]:
    """Powers of two from `min_bucket` (below `pad_multiple` when it is > 0, then its multiples) below
    `max_length`, then `max_length`: e.g. 128 -> (8, 16, 32, 64, 128); with pad_multiple 32 ->
    (8, 16, 32, 64, 96, 128)."""
    if pad_multiple < 0:
        raise ValueError(f"pad_multiple must be >= 0 (0: powers of two), got {pad_multiple}")
    buckets, length = [], min_bucket
    while length < max_length and not (pad_multiple and length >= pad_multiple):
        buckets.append(length)
        length *= 2
    if pad_multiple:
        length = (buckets[-1] // pad_multiple + 1) * pad_multiple if buckets else pad_multiple
        while length < max_length:
            buckets.append(length)
            length += pad_multiple
    return tuple(buckets) + (max_length,)


def _bucket(length: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= length)


class Batcher:
    """Builds host slices of global batches of `encoded` (see the module docstring)."""

    def __init__(self, encoded: EncodedExamples, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, min_bucket: int = DEFAULT_MIN_BUCKET, pad_multiple: int = 0):
        if len(encoded) == 0:
            raise ValueError("no examples to batch")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"the global batch size ({batch_size}) must be a positive multiple of the "
                             f"process count ({process_count}): each host takes an equal slice")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.encoded = encoded
        self.batch_size = batch_size
        self.rows_per_host = batch_size // process_count
        self.process_index = process_index
        self.source_buckets = bucket_lengths(encoded.max_source_length, min_bucket, pad_multiple)
        self.target_buckets = bucket_lengths(max(encoded.max_target_length, 1), min_bucket, pad_multiple)
        self.source_lengths, self.target_lengths = encoded.lengths()

    def padded_lengths(self, indices: np.ndarray) -> tuple[int, int]:
        """(source, target) lengths the batch of examples `indices` pads to: their buckets."""
        return (_bucket(int(self.source_lengths[indices].max()), self.source_buckets),
                _bucket(int(self.target_lengths[indices].max()), self.target_buckets))

    def batch(self, indices: np.ndarray, at_least: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
        """This host's rows of the global batch of examples `indices` (at most `batch_size`; the
        rest of the batch is padding rows). Arrays: int32 [rows_per_host, bucketed length], the
        (source, target) lengths padded to at least `at_least` (lengths of this batcher's buckets)."""
        if not 0 < len(indices) <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} examples, got {len(indices)}")
        source_length, target_length = map(max, zip(self.padded_lengths(indices), at_least))
        first = self.process_index * self.rows_per_host
        mine = indices[first: first + self.rows_per_host]
        input_ids = np.full((self.rows_per_host, source_length), self.encoded.pad_id, dtype=np.int32)
        attention_mask = np.zeros_like(input_ids)
        for row, example in enumerate(mine):
            source = self.encoded.source_ids[example]
            input_ids[row, : len(source)] = source
            attention_mask[row, : len(source)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.encoded.token_type_ids is not None:
            token_type_ids = np.zeros_like(input_ids)
            for row, example in enumerate(mine):
                types = self.encoded.token_type_ids[example]
                token_type_ids[row, : len(types)] = types
            batch["token_type_ids"] = token_type_ids
        if self.encoded.target_ids is None:
            labels = np.zeros((self.rows_per_host,), self.encoded.class_labels.dtype)
            labels[: len(mine)] = self.encoded.class_labels[mine]
            weights = np.zeros((self.rows_per_host,), np.float32)
            weights[: len(mine)] = 1.0
            return {**batch, "labels": labels, "weights": weights}
        labels = np.full((self.rows_per_host, target_length), IGNORE_LABEL, dtype=np.int32)
        for row, example in enumerate(mine):
            target = self.encoded.target_ids[example]
            labels[row, : len(target)] = target
        return {**batch, "labels": labels, "decoder_attention_mask": (labels != IGNORE_LABEL).astype(np.int32)}


class TrainBatches:
    """Shuffled training batches, epoch after epoch (an endless iterator), resumable mid-epoch.

    Epoch e visits the examples in the order Generator(PCG64([seed, e])).permutation(n) (with
    `group_batches` K > 0, each run of K * batch_size examples of it then sorted by source length,
    longest first, ties in permutation order), in consecutive global batches of `batch_size`; with
    `drop_last` the final partial batch of an epoch is skipped, otherwise it is filled with padding
    rows. `state()` is a JSON-serialisable dict {"epoch", "position"} (position = batches already
    taken in that epoch); passing it back as `state=` continues with the very next batch.
    """

    def __init__(self, encoded: EncodedExamples, batch_size: int, seed: int, *, drop_last: bool = False,
                 process_index: int = 0, process_count: int = 1, min_bucket: int = DEFAULT_MIN_BUCKET,
                 pad_multiple: int = 0, group_batches: int = 0, state: dict[str, Any] | None = None):
        self.batcher = Batcher(encoded, batch_size, process_index=process_index,
                               process_count=process_count, min_bucket=min_bucket, pad_multiple=pad_multiple)
        if group_batches < 0:
            raise ValueError(f"group_batches must be >= 0 (0: no grouping by length), got {group_batches}")
        self.seed, self.group_batches = seed, group_batches
        n = len(encoded)
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"drop_last with {n} examples and batch size {batch_size} leaves no batch")
        self.epoch, self.position = _checked_state(state or {"epoch": 0, "position": 0}, self.batches_per_epoch)
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def state(self) -> dict[str, int]:
        """Where the next batch comes from: {"epoch": e, "position": batches taken in epoch e}."""
        return {"epoch": self.epoch, "position": self.position}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The example order of `epoch`: a permutation of range(num examples)."""
        if epoch != self._order_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            order = rng.permutation(len(self.batcher.encoded))
            if self.group_batches:
                run = self.group_batches * self.batcher.batch_size
                lengths = self.batcher.source_lengths
                order = np.concatenate([part[np.argsort(-lengths[part], kind="stable")]
                                        for part in np.split(order, range(run, len(order), run))])
            self._order_epoch, self._order = epoch, order
        return self._order

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.batcher.batch(self.next_indices())

    def next_indices(self) -> np.ndarray:
        """The examples of the next batch (int64 [<= batch_size]); moves past it."""
        size = self.batcher.batch_size
        indices = self.epoch_order(self.epoch)[self.position * size: (self.position + 1) * size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return indices


def next_aligned_batches(loaders: Sequence[TrainBatches]) -> list[dict[str, np.ndarray]]:
    """The next batch of each loader, all padded to the same (source, target) lengths, the longest of
    their buckets: a step that takes several batches then compiles once per bucket, not once per
    combination of buckets. The loaders' buckets must agree (same maximum lengths and padding)."""
    indices = [loader.next_indices() for loader in loaders]
    lengths = [loader.batcher.padded_lengths(i) for loader, i in zip(loaders, indices)]
    longest = (max(source for source, _ in lengths), max(target for _, target in lengths))
    return [loader.batcher.batch(i, longest) for loader, i in zip(loaders, indices)]


def _checked_state(state: dict[str, Any], batches_per_epoch: int) -> tuple[int, int]:
    try:
        epoch, position = state["epoch"], state["position"]
    except (KeyError, TypeError):
        raise ValueError(f"a pipeline state is {{'epoch': int, 'position': int}}, got {state!r}") from None
    if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0 and 0 <= position < batches_per_epoch):
        raise ValueError(f"pipeline state {state!r} does not fit this data: position must be in "
                         f"[0, {batches_per_epoch}) batches per epoch and epoch >= 0")
    return epoch, position


@dataclass(frozen=True)
class EvalBatch:
    """One evaluation batch: this host's `arrays`, and where the global batch sits in the examples:
    its rows are examples [start, start + num_real); rows from num_real on are padding."""

    arrays: dict[str, np.ndarray]
    start: int
    num_real: int


def eval_batches(encoded: EncodedExamples, batch_size: int, *, process_index: int = 0, process_count: int = 1,
                 min_bucket: int = DEFAULT_MIN_BUCKET) -> Iterator[EvalBatch]:
    """All examples in order, in global batches of `batch_size` rows (the last one padded)."""
    batcher = Batcher(encoded, batch_size, process_index=process_index, process_count=process_count,
                      min_bucket=min_bucket)
    for start in range(0, len(encoded), batch_size):
        indices = np.arange(start, min(start + batch_size, len(encoded)))
        yield EvalBatch(batcher.batch(indices), start, len(indices))
