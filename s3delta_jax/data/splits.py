"""The paper's data splits (reference doc section 6), deterministic per seed.

  * "small" tasks: train = the original train split, unshuffled; the original validation split is
    permuted, its first floor(n/2) rows become validation, the rest test.
  * "large" tasks: the train split is permuted, its first 2,000 rows become validation, the rest
    train; test = the original validation split (MNLI: validation_matched).
  * The search's D_delta / D_alpha are equal random halves of the train split (one row dropped when
    the count is odd), or, with `search_rows(..., "shared")` (not the paper's), the whole train split each.

Permutations come from numpy's Generator(PCG64(seed)) (the reference's torch.randperm cannot be
reproduced bit for bit; the counts and the rules are the same). The halves use the independent
stream PCG64(SeedSequence(seed, spawn_key=(1,))), so they do not repeat the split's permutation.
Rows are split by reference, never copied; MultiRC is split by answer rows, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s3delta_jax.data.errors import TooFewExamplesError
from s3delta_jax.data.tasks import Task

LARGE_TASK_VALIDATION_SIZE = 2000
_HALVES_STREAM = 1
# The search's data: "halves" = disjoint D_delta / D_alpha (the paper's); "shared" = both levels read the
# whole train split (their loaders shuffle it with different seeds, so a step's two batches differ).
SEARCH_DATA_SPLITS = ("halves", "shared")


@dataclass(frozen=True)
class Splits:
    """The train / validation / test rows of one seed."""

    train: list[Any]
    validation: list[Any]
    test: list[Any]


def paper_splits(
    task: Task, train_rows: Sequence[Any], validation_rows: Sequence[Any], seed: int,
    large_validation_size: int = LARGE_TASK_VALIDATION_SIZE,
) -> Splits:
    """The paper's split of `task`'s original train and validation rows for `seed`."""
    if task.size == "small":
        if len(validation_rows) < 2:
            raise TooFewExamplesError(
                f"task {task.name!r} halves its {len(validation_rows)} validation row(s) into validation and "
                "test: it needs at least 2; check the validation file of the data directory")
        order = permutation(len(validation_rows), seed)
        half = len(validation_rows) // 2
        return Splits(list(train_rows), _take(validation_rows, order[:half]), _take(validation_rows, order[half:]))
    if len(train_rows) <= large_validation_size:
        raise TooFewExamplesError(
            f"task {task.name!r} is large: it needs more than {large_validation_size} train rows to take "
            f"{large_validation_size} as validation, got {len(train_rows)} (pass a smaller large_validation_size)"
        )
    order = permutation(len(train_rows), seed)
    return Splits(
        _take(train_rows, order[large_validation_size:]),
        _take(train_rows, order[:large_validation_size]),
        list(validation_rows),
    )


def search_halves(train_rows: Sequence[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """(D_delta, D_alpha): two disjoint random halves of equal size (floor(n/2) each) of `train_rows`."""
    if len(train_rows) < 2:
        raise TooFewExamplesError(f"the search halves the train split into D_delta and D_alpha: it needs at "
                                  f"least 2 train rows, got {len(train_rows)}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_HALVES_STREAM,))))
    order = rng.permutation(len(train_rows))
    half = len(train_rows) // 2
    return _take(train_rows, order[:half]), _take(train_rows, order[half: 2 * half])


def search_rows(train_rows: Sequence[Any], seed: int, data_split: str) -> tuple[list[Any], list[Any]]:
    """(D_delta, D_alpha) of the search as `data_split` (one of SEARCH_DATA_SPLITS) says."""
    if data_split == "halves":
        return search_halves(train_rows, seed)
    if data_split == "shared":
        return list(train_rows), list(train_rows)
    raise ValueError(f"unknown search data split {data_split!r}: use one of {', '.join(SEARCH_DATA_SPLITS)}")


def permutation(n: int, seed: int) -> np.ndarray:
    """The seed's permutation of range(n): Generator(PCG64(seed)).permutation(n)."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(n)


def _take(rows: Sequence[Any], indices: np.ndarray) -> list[Any]:
    return [rows[i] for i in indices]
