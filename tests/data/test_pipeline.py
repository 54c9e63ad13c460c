"""Batching: resumable shuffling, bucketed shapes, per-host slices, evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s3delta_jax.data import (TrainBatches, bucket_lengths, encode_examples, eval_batches, get_task,
                              next_aligned_batches)
from s3delta_jax.data.pipeline import truncate
from s3delta_jax.data.tasks import Example
from s3delta_jax.data.tokenizers import get_tokenizer

TOKENIZER = get_tokenizer("bytes")
TASK = get_task("mrpc")


def make_encoded(n: int = 37, seed: int = 0, max_source_length: int = 64):
    """n MRPC-style examples with sources of very different lengths (some longer than the maximum)."""
    rng = np.random.default_rng(seed)
    rows = [{"sentence1": "w" * int(rng.integers(0, 100) ** 2 // 100), "sentence2": str(i), "label": i % 2}
            for i in range(n)]
    examples = TASK.examples(rows)
    return examples, encode_examples(TASK, examples, TOKENIZER, max_source_length=max_source_length)


def source_text(input_ids: np.ndarray) -> str:
    return TOKENIZER.decode([i for i in input_ids if i != 0])


def test_arrays_names_types_and_padding():
    examples, encoded = make_encoded()
    batch = next(TrainBatches(encoded, batch_size=8, seed=0))
    assert sorted(batch) == ["attention_mask", "decoder_attention_mask", "input_ids", "labels"]
    for array in batch.values():
        assert array.dtype == np.int32 and array.shape[0] == 8
    assert batch["labels"].shape[1] == 2  # "0"/"1" + EOS
    assert ((batch["input_ids"] != 0) == (batch["attention_mask"] == 1)).all()
    assert ((batch["labels"] != -100) == (batch["decoder_attention_mask"] == 1)).all()
    assert (batch["labels"][:, -1] == TOKENIZER.eos_id).all()


def test_truncation_keeps_eos_last():
    assert truncate([5, 6, 7, 8, 1], 3) == [5, 6, 1]
    assert truncate([5, 1], 3) == [5, 1]
    _, encoded = make_encoded(max_source_length=16)
    assert max(len(ids) for ids in encoded.source_ids) == 16
    assert all(ids[-1] == TOKENIZER.eos_id for ids in encoded.source_ids)


def test_an_epoch_visits_every_example_once_in_a_seeded_order():
    examples, encoded = make_encoded(n=37)
    batches = TrainBatches(encoded, batch_size=8, seed=3)
    assert batches.batches_per_epoch == 5
    seen = []
    for _ in range(5):
        batch = next(batches)
        seen += [source_text(ids) for ids, mask in zip(batch["input_ids"], batch["attention_mask"]) if mask.any()]
    assert batches.state() == {"epoch": 1, "position": 0}
    expected = [TOKENIZER.decode(encoded.source_ids[i]) for i in batches.epoch_order(0)]
    assert seen == expected
    assert sorted(seen) == sorted(TOKENIZER.decode(ids) for ids in encoded.source_ids)
    assert not (batches.epoch_order(0) == batches.epoch_order(1)).all()
    assert not (TrainBatches(encoded, 8, seed=4).epoch_order(0) == batches.epoch_order(0)).all()


def test_last_partial_batch_is_padding_rows_or_dropped():
    _, encoded = make_encoded(n=37)
    batches = TrainBatches(encoded, batch_size=8, seed=0)
    last = [next(batches) for _ in range(5)][-1]
    assert last["input_ids"].shape[0] == 8
    assert last["attention_mask"][5:].sum() == 0 and (last["labels"][5:] == -100).all()  # 37 = 4 * 8 + 5
    assert last["attention_mask"][:5].all(axis=1).any()
    dropping = TrainBatches(encoded, batch_size=8, seed=0, drop_last=True)
    assert dropping.batches_per_epoch == 4
    for _ in range(4):
        assert next(dropping)["attention_mask"].any(axis=1).all()
    assert dropping.state() == {"epoch": 1, "position": 0}


def test_resume_mid_epoch_gives_the_same_next_batches():
    _, encoded = make_encoded(n=37)
    original = TrainBatches(encoded, batch_size=8, seed=11)
    for _ in range(7):  # into the second epoch
        next(original)
    state = json.loads(json.dumps(original.state()))
    assert state == {"epoch": 1, "position": 2}
    resumed = TrainBatches(encoded, batch_size=8, seed=11, state=state)
    for _ in range(6):  # across the next epoch boundary too
        expected, got = next(original), next(resumed)
        assert all((expected[k] == got[k]).all() for k in expected)


@pytest.mark.parametrize("state", [{"epoch": 0}, {"epoch": 0, "position": 5}, {"epoch": -1, "position": 0}, [0, 1]])
def test_bad_states_are_rejected(state):
    _, encoded = make_encoded(n=37)
    with pytest.raises(ValueError, match="state"):
        TrainBatches(encoded, batch_size=8, seed=0, state=state)


def test_bucketed_padding_bounds_the_number_of_shapes():
    assert bucket_lengths(128) == (8, 16, 32, 64, 128)
    assert bucket_lengths(100) == (8, 16, 32, 64, 100)
    assert bucket_lengths(2) == (2,)
    _, encoded = make_encoded(n=100, max_source_length=128)
    source_lengths, _ = encoded.lengths()
    size = 2
    batches = TrainBatches(encoded, batch_size=size, seed=0)
    shapes = set()
    for _ in range(3 * batches.batches_per_epoch):
        epoch, position = batches.state()["epoch"], batches.state()["position"]
        indices = batches.epoch_order(epoch)[position * size: (position + 1) * size]
        batch = next(batches)
        # The smallest bucket that holds the longest source of the batch.
        assert batch["input_ids"].shape[1] == min(b for b in bucket_lengths(128) if b >= source_lengths[indices].max())
        shapes.add((batch["input_ids"].shape, batch["labels"].shape))
    assert len(shapes) <= len(bucket_lengths(128)) * len(bucket_lengths(encoded.max_target_length))
    assert len(shapes) >= 3  # the lengths really vary


def test_pad_multiple_buckets_are_powers_of_two_then_its_multiples():
    assert bucket_lengths(128, pad_multiple=32) == (8, 16, 32, 64, 96, 128)
    assert bucket_lengths(128, pad_multiple=16) == (8, 16, 32, 48, 64, 80, 96, 112, 128)
    assert bucket_lengths(100, pad_multiple=32) == (8, 16, 32, 64, 96, 100)
    assert bucket_lengths(128, pad_multiple=24) == (8, 16, 24, 48, 72, 96, 120, 128)
    with pytest.raises(ValueError, match="pad_multiple"):
        bucket_lengths(128, pad_multiple=-1)


def test_grouped_batches_sort_each_run_of_the_shuffled_order_by_length():
    _, encoded = make_encoded(n=100, max_source_length=128)
    source_lengths, _ = encoded.lengths()
    plain = TrainBatches(encoded, batch_size=4, seed=5)
    grouped = TrainBatches(encoded, batch_size=4, seed=5, group_batches=3, pad_multiple=16)
    for epoch in (0, 1):
        shuffled, order = plain.epoch_order(epoch), grouped.epoch_order(epoch)
        for start in range(0, 100, 12):  # runs of 3 batches of 4; the last run holds 4 examples
            run = order[start: start + 12]
            assert sorted(run) == sorted(shuffled[start: start + 12])
            lengths = source_lengths[run]
            assert (np.diff(lengths) <= 0).all()  # longest first
            for length in np.unique(lengths):  # ties keep the shuffled order
                tied = run[lengths == length]
                assert list(tied) == [i for i in shuffled[start: start + 12] if i in set(tied)]
    padded = [next(grouped)["input_ids"].shape[1] for _ in range(grouped.batches_per_epoch)]
    unpadded = [next(plain)["input_ids"].shape[1] for _ in range(plain.batches_per_epoch)]
    assert sum(padded) < sum(unpadded)
    with pytest.raises(ValueError, match="group_batches"):
        TrainBatches(encoded, batch_size=4, seed=5, group_batches=-1)


def test_a_grouped_loader_resumes_with_the_very_next_batch():
    _, encoded = make_encoded(n=37)
    original = TrainBatches(encoded, batch_size=4, seed=9, group_batches=2)
    for _ in range(13):
        next(original)
    resumed = TrainBatches(encoded, batch_size=4, seed=9, group_batches=2, state=original.state())
    for _ in range(12):
        expected, batch = next(original), next(resumed)
        assert all((expected[k] == batch[k]).all() for k in expected)


def test_aligned_batches_share_the_longest_bucket_and_keep_their_rows():
    _, encoded = make_encoded(n=100, max_source_length=128)
    loaders = [TrainBatches(encoded, batch_size=2, seed=seed) for seed in (0, 1)]
    references = [TrainBatches(encoded, batch_size=2, seed=seed) for seed in (0, 1)]
    differed = False
    for _ in range(30):
        aligned = next_aligned_batches(loaders)
        own = [next(reference) for reference in references]
        widths = [batch["input_ids"].shape[1] for batch in own]
        differed |= widths[0] != widths[1]
        for batch, reference in zip(aligned, own):
            assert batch["input_ids"].shape[1] == max(widths)
            assert batch["labels"].shape[1] == max(r["labels"].shape[1] for r in own)
            for name, array in reference.items():
                pad = -100 if name == "labels" else 0
                columns = array.shape[1]
                assert (batch[name][:, :columns] == array).all() and (batch[name][:, columns:] == pad).all()
    assert differed  # the two loaders' own buckets really differed in some step
    assert [loader.state() for loader in loaders] == [reference.state() for reference in references]


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_get_equal_consecutive_slices_of_the_same_global_batch(process_count):
    _, encoded = make_encoded(n=37)
    whole = TrainBatches(encoded, batch_size=8, seed=2)
    hosts = [TrainBatches(encoded, batch_size=8, seed=2, process_index=k, process_count=process_count)
             for k in range(process_count)]
    for _ in range(6):
        expected = next(whole)
        parts = [next(host) for host in hosts]
        for key in expected:
            assert all(part[key].shape == (8 // process_count, expected[key].shape[1]) for part in parts)
            assert (np.concatenate([part[key] for part in parts]) == expected[key]).all()


def test_batch_size_must_divide_among_hosts():
    _, encoded = make_encoded()
    with pytest.raises(ValueError, match="multiple of the process count"):
        TrainBatches(encoded, batch_size=6, seed=0, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        TrainBatches(encoded, batch_size=8, seed=0, process_index=4, process_count=4)


def test_eval_batches_keep_order_and_report_real_rows():
    examples, encoded = make_encoded(n=37)
    batches = list(eval_batches(encoded, batch_size=16))
    assert [(b.start, b.num_real) for b in batches] == [(0, 16), (16, 16), (32, 5)]
    texts = [source_text(ids) for b in batches for ids in b.arrays["input_ids"][: b.num_real]]
    assert texts == [TOKENIZER.decode(ids) for ids in encoded.source_ids]
    assert batches[-1].arrays["input_ids"].shape[0] == 16
    assert batches[-1].arrays["attention_mask"][5:].sum() == 0
    per_host = list(eval_batches(encoded, batch_size=16, process_index=1, process_count=2))
    assert (per_host[0].arrays["input_ids"] == batches[0].arrays["input_ids"][8:]).all()
    assert per_host[-1].num_real == 5 and per_host[-1].arrays["attention_mask"].sum() == 0  # host 1 has no real rows


def test_record_sources_are_tokenized_once_per_text():
    task = get_task("superglue-record")
    row = {"passage": "P", "query": "Q", "entities": ["A", "B"], "answers": ["A", "B"]}
    examples = task.examples([row])
    encoded = encode_examples(task, examples, TOKENIZER)
    assert encoded.source_ids[0] is encoded.source_ids[1]
    assert encoded.max_target_length == 128 and encoded.max_source_length == 512
    assert [TOKENIZER.decode(ids) for ids in encoded.target_ids] == ["A", "B"]


def test_examples_keep_their_rows():
    examples, _ = make_encoded(n=3)
    assert all(isinstance(e, Example) and e.row["sentence2"] == str(i) for i, e in enumerate(examples))
