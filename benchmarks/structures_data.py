"""The rows a structures benchmark run sees, built from the public data API as the programs build them.

  * `paper_split_data`: the paper's train / validation / test of one seed (for MRPC: train = the
    3,668 train rows; validation and test = the two 204-row halves of the 408 validation rows,
    re-drawn per seed), encoded by the backbone.
  * `full_test_data`: the task's own test file (MRPC: the 1,725 labelled rows of test.tsv), or None
    where any of its rows is unlabelled (label -1, as in GLUE's hub test splits).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from s3delta_jax import data as data_lib
from s3delta_jax.data.tasks import UNLABELED
from s3delta_jax.models.backbone import Backbone

PAPER_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split: its examples and their token ids (`encoded` has one row per example)."""

    examples: list[data_lib.Example]
    encoded: data_lib.EncodedExamples


def task_of(config: ml_collections.ConfigDict) -> data_lib.Task:
    return data_lib.get_task(config.data.task, config.data.fix_reference_bugs)


def encode(config: ml_collections.ConfigDict, backbone: Backbone, rows: list[dict]) -> SplitData:
    task = task_of(config)
    examples = task.examples(rows)
    return SplitData(examples, backbone.encode(task, examples, config.data.max_source_length or None))


def paper_split_data(config: ml_collections.ConfigDict, backbone: Backbone) -> dict[str, SplitData]:
    """{"train", "validation", "test"}: the paper's splits of `config.seed` (data.paper_splits)."""
    task, path = task_of(config), config.data.path or None
    rows = {split: data_lib.load_split(task, split, path) for split in ("train", "validation")}
    splits = data_lib.paper_splits(task, rows["train"], rows["validation"], config.seed)
    return {split: encode(config, backbone, getattr(splits, split)) for split in PAPER_SPLITS}


def full_test_data(config: ml_collections.ConfigDict, backbone: Backbone) -> SplitData | None:
    """The task's whole test file, or None when it has unlabelled rows (nothing to score against)."""
    task = task_of(config)
    rows = data_lib.load_split(task, "test", config.data.path or None)
    if any(task.label(row) == UNLABELED for row in rows):
        return None
    return encode(config, backbone, rows)
