"""Evaluation of a (delta-injected) backbone on a split, through its task head.

The head's `predict` runs as one partitioned jit over every batch; its rows become prediction
strings (`head.predictions`), which the task's metrics score (`data.compute_metrics`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from s3delta_jax.data import EncodedExamples, Example, Task, compute_metrics, eval_batches
from s3delta_jax.models.backbone import TaskHead
from s3delta_jax.train.sharding import Partitioner


class Evaluator:
    """Predictions and metrics of one split, with the partitioned predict function built once.

    `apply_for(variables)` returns an apply function with the signature of `model.apply` (for the
    search: deltas gated by p; for re-training: the chosen deltas); `variables` is a dict with
    "delta" and optionally "alpha" and "extra" (the head's always-trained parameters). The variables
    pass through jit as arguments, so one compilation serves every evaluation of a run. The backbone
    params stay sharded, the variables are replicated, each process loads its rows of every batch,
    and every process gets all predictions (default: all on one device).
    """

    def __init__(self, task: Task, head: TaskHead, batch_size: int,
                 apply_for: Callable[[Any], Callable[..., Any]], partitioner: Partitioner | None = None):
        partitioner = partitioner or Partitioner.single_device()
        partitioner.check_batch_size(batch_size, "eval_batch_size")
        self.task, self.head, self.batch_size, self.partitioner = task, head, batch_size, partitioner
        self._predict = partitioner.jit(
            lambda params, variables, batch: head.predict(apply_for(variables), params, batch, variables.get("extra")),
            in_shardings=(partitioner.param_shardings, partitioner.replicated, partitioner.batch),
            out_shardings=partitioner.replicated,
        )

    def __call__(self, params: Any, variables: dict[str, Any], examples: Sequence[Example],
                 encoded: EncodedExamples) -> tuple[dict[str, float], list[str]]:
        """(metrics in the task's order, prediction strings) for `examples` (encoded as `encoded`)."""
        index, count = self.partitioner.host_slice
        predictions: list[str] = []
        for batch in eval_batches(encoded, self.batch_size, process_index=index, process_count=count):
            arrays = self.partitioner.global_batch({k: batch.arrays[k] for k in self.head.predict_inputs})
            outputs = np.asarray(self._predict(params, variables, arrays))
            predictions += self.head.predictions(outputs[: batch.num_real])
        return compute_metrics(self.task, predictions, examples), predictions
