"""Data for s3delta_jax: GLUE/SuperGLUE tasks in the reference's text-to-text format, their sources
(hub, local files, built-in synthetic data), the paper's splits, batching, and metrics.

    task = get_task("mrpc")
    rows = {s: load_split(task, s, data_dir) for s in ("train", "validation")}
    splits = paper_splits(task, rows["train"], rows["validation"], seed=0)
    d_delta, d_alpha = search_halves(splits.train, seed=0)
    encoded = encode_examples(task, task.examples(d_delta), tokenizer)
    for batch in TrainBatches(encoded, batch_size=32, seed=0): ...
    compute_metrics(task, predictions, task.examples(splits.validation))
"""

from s3delta_jax.data.errors import DataFormatError
from s3delta_jax.data.glue import FIXES
from s3delta_jax.data.metrics import compute_metrics, primary_metric
from s3delta_jax.data.pipeline import (
    EncodedExamples,
    EvalBatch,
    TrainBatches,
    bucket_lengths,
    encode_examples,
    eval_batches,
    next_aligned_batches,
)
from s3delta_jax.data.registry import get_task, task_names
from s3delta_jax.data.sources import load_split, require_hub
from s3delta_jax.data.splits import SEARCH_DATA_SPLITS, Splits, paper_splits, search_halves, search_rows
from s3delta_jax.data.synthetic import make_synthetic_task
from s3delta_jax.data.tasks import Example, Task

__all__ = [
    "DataFormatError", "EncodedExamples", "EvalBatch", "Example", "FIXES", "SEARCH_DATA_SPLITS", "Splits", "Task",
    "TrainBatches", "bucket_lengths", "compute_metrics", "encode_examples", "eval_batches", "get_task", "load_split",
    "make_synthetic_task", "next_aligned_batches", "paper_splits", "primary_metric", "require_hub", "search_halves",
    "search_rows", "task_names",
]
