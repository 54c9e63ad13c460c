"""The paper's splits (reference section 6) on the real MRPC files and on a large task."""

from __future__ import annotations

import numpy as np
import pytest

from s3delta_jax.data import get_task, load_split, paper_splits, search_halves, search_rows


@pytest.fixture(scope="module")
def mrpc_rows(mrpc_dir):
    task = get_task("mrpc")
    return task, load_split(task, "train", mrpc_dir), load_split(task, "validation", mrpc_dir)


def keys(rows):
    return [(row["idx"], row["sentence1"]) for row in rows]


def test_mrpc_small_task_split_counts_and_determinism(mrpc_rows):
    task, train, validation = mrpc_rows
    splits = paper_splits(task, train, validation, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3668, 204, 204)
    assert splits.train == train  # small task: the original train split, unshuffled
    assert sorted(keys(splits.validation + splits.test)) == sorted(keys(validation))  # a partition
    assert not set(keys(splits.validation)) & set(keys(splits.test))
    again = paper_splits(task, train, validation, seed=0)
    assert keys(again.validation) == keys(splits.validation) and keys(again.test) == keys(splits.test)
    for other_seed in (1, 2, 42):
        assert keys(paper_splits(task, train, validation, seed=other_seed).validation) != keys(splits.validation)


def test_mrpc_search_halves(mrpc_rows):
    task, train, validation = mrpc_rows
    d_delta, d_alpha = search_halves(paper_splits(task, train, validation, seed=0).train, seed=0)
    assert len(d_delta) == len(d_alpha) == 1834
    assert sorted(keys(d_delta + d_alpha)) == sorted(keys(train))
    again = search_halves(train, seed=0)
    assert keys(again[0]) == keys(d_delta) and keys(again[1]) == keys(d_alpha)
    assert keys(search_halves(train, seed=1)[0]) != keys(d_delta)


def test_odd_count_halves_drop_one_row():
    rows = list(range(11))
    first, second = search_halves(rows, seed=3)
    assert len(first) == len(second) == 5
    assert len(set(first) | set(second)) == 10


def test_halves_do_not_reuse_the_split_permutation():
    rows = list(range(100))
    first, _ = search_halves(rows, seed=0)
    assert first != list(np.random.Generator(np.random.PCG64(0)).permutation(100)[:50])


def test_large_task_takes_2000_train_rows_as_validation_and_validation_as_test():
    task = get_task("qnli")
    train = [{"idx": i} for i in range(2500)]
    validation = [{"idx": 10_000 + i} for i in range(30)]
    splits = paper_splits(task, train, validation, seed=5)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (500, 2000, 30)
    assert splits.test == validation
    order = np.random.Generator(np.random.PCG64(5)).permutation(2500)
    assert [row["idx"] for row in splits.validation] == list(order[:2000])
    assert [row["idx"] for row in splits.train] == list(order[2000:])


def test_large_task_with_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="more than 2000 train rows"):
        paper_splits(get_task("sst2"), [{}] * 100, [{}] * 10, seed=0)


def test_small_task_with_odd_validation_gives_the_extra_row_to_test():
    task = get_task("superglue-rte")
    splits = paper_splits(task, [{}] * 2490, [{"idx": i} for i in range(277)], seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2490, 138, 139)  # the doc's RTE counts


def test_search_rows_are_the_halves_or_the_whole_split_for_both_levels():
    rows = list(range(11))
    assert search_rows(rows, 3, "halves") == search_halves(rows, 3)
    assert search_rows(rows, 3, "shared") == (rows, rows)
    with pytest.raises(ValueError, match="halves, shared"):
        search_rows(rows, 3, "overlapping")
