"""Evaluation of a (delta-injected) T5 on a split: greedy generation or rank classification.

  * "generate" (the reference): greedy decoding to `max_decode_length` tokens, decoded to strings and
    compared as strings by the task's metrics.
  * "rank": every example is scored against each of the task's target strings (sum of token
    log-likelihoods) and the best one is the prediction. Exact for tasks with a fixed label set and
    much faster than generation; ReCoRD (free-form entities) must use "generate".
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from s3delta_jax.data import EncodedExamples, Example, Task, compute_metrics, eval_batches
from s3delta_jax.data.pipeline import IGNORE_LABEL
from s3delta_jax.models import t5
from s3delta_jax.models.tokenizers import Tokenizer
from s3delta_jax.train.sharding import Partitioner

EVAL_METHODS = ("generate", "rank")


def check_eval_method(method: str, task: Task) -> None:
    """Raises ValueError for an unknown method, or rank classification on a task without a label set."""
    if method not in EVAL_METHODS:
        raise ValueError(f"unknown evaluation method {method!r}: use one of {', '.join(EVAL_METHODS)}")
    if method == "rank" and not task.target_strings():
        raise ValueError(f"task {task.name!r} has no fixed label set, so rank classification cannot score it: "
                         "use --config.eval.method=generate")


class Evaluator:
    """Predictions and metrics of one split, with the partitioned decode/score functions built once.

    `apply_for(variables)` must return an apply function with the signature of `model.apply` (for the
    search: deltas gated by p; for re-training: the selected deltas). The variables are passed through
    jit as arguments, so one compilation serves every evaluation of a run. The backbone params stay
    sharded as `partitioner.param_shardings` says, the variables are replicated, each process loads its
    rows of every batch, and every process gets all predictions (default: all on one device).
    """

    def __init__(self, task: Task, tokenizer: Tokenizer, config: t5.T5Config, method: str,
                 batch_size: int, max_decode_length: int,
                 apply_for: Callable[[Any], Callable[..., Any]], partitioner: Partitioner | None = None):
        check_eval_method(method, task)
        partitioner = partitioner or Partitioner.single_device()
        partitioner.check_batch_size(batch_size, "eval_batch_size")
        self.task, self.tokenizer, self.method = task, tokenizer, method
        self.batch_size = batch_size
        self.partitioner = partitioner
        params, batch, replicated = partitioner.param_shardings, partitioner.batch, partitioner.replicated
        self._decode = partitioner.jit(
            lambda params, variables, ids, mask: t5.greedy_decode(
                apply_for(variables), params, ids, mask, max_decode_length, config
            ),
            in_shardings=(params, replicated, batch, batch), out_shardings=replicated,
        )
        self._score = partitioner.jit(
            lambda params, variables, ids, mask, label: t5.sequence_log_likelihood(
                apply_for(variables), params, ids, mask, jnp.broadcast_to(label, (ids.shape[0], label.shape[0])),
                decoder_start_token_id=config.decoder_start_token_id, pad_id=config.pad_token_id,
            ),
            in_shardings=(params, replicated, batch, batch, replicated), out_shardings=replicated,
        )
        if method == "rank":
            self._label_ids = partitioner.replicate(_padded_label_ids(task.target_strings(), tokenizer))

    def __call__(self, params: Any, variables: Any, examples: Sequence[Example],
                 encoded: EncodedExamples) -> tuple[dict[str, float], list[str]]:
        """(metrics in the task's order, prediction strings) for `examples` (encoded as `encoded`)."""
        index, count = self.partitioner.host_slice
        predictions: list[str] = []
        for batch in eval_batches(encoded, self.batch_size, process_index=index, process_count=count):
            arrays = self.partitioner.global_batch(
                {name: batch.arrays[name] for name in ("input_ids", "attention_mask")})
            ids, mask = arrays["input_ids"], arrays["attention_mask"]
            if self.method == "generate":
                tokens = np.asarray(self._decode(params, variables, ids, mask))
                texts = [self.tokenizer.decode(row) for row in tokens[: batch.num_real]]
            else:
                texts = self._rank(params, variables, ids, mask)[: batch.num_real]
            predictions += texts
        return compute_metrics(self.task, predictions, examples), predictions

    def _rank(self, params, variables, ids, mask) -> list[str]:
        """The best-scoring target string per row: scores [rows, labels] -> argmax."""
        targets = self.task.target_strings()
        scores = np.stack([np.asarray(self._score(params, variables, ids, mask, label))
                           for label in self._label_ids], axis=1)
        return [targets[i] for i in scores.argmax(axis=1)]


def _padded_label_ids(targets: Sequence[str], tokenizer: Tokenizer) -> list[np.ndarray]:
    """Each target's ids (EOS included), padded with -100 to one common length so every label
    scores with one compiled shape."""
    encoded = [tokenizer.encode(t) for t in targets]
    length = max(len(ids) for ids in encoded)
    return [np.asarray(ids + [IGNORE_LABEL] * (length - len(ids)), np.int32) for ids in encoded]
