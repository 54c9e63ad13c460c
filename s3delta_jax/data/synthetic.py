"""A built-in task that needs no files: sentence pairs of random letters, label "1" iff the marker word
"xyz" occurs in either sentence (the letters x, y, z occur nowhere else). A tiny T5 learns it in a few
hundred steps, so offline smoke runs can check that training works end to end.

    source: "synthetic sentence1: kob tmew rf sentence2: dahi xyz"    target: "1"

Rows are generated deterministically from (data_seed, split); each split is exactly balanced.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from s3delta_jax.data.tasks import SPLITS, Task, check_split

NAME = "synthetic"
MARKER = "xyz"
LETTERS = np.array(list("abcdefghijklmnopqrstuvw"))
WORDS_PER_SENTENCE = (2, 3)  # inclusive range
LETTERS_PER_WORD = (2, 4)  # inclusive range


def synthetic_rows(split: str, sizes: dict[str, int], data_seed: int = 0) -> list[dict[str, Any]]:
    """`sizes[split]` rows {sentence1, sentence2, label, idx}; half of them (label 1) hold the marker."""
    check_split(split)
    rng = np.random.Generator(np.random.PCG64([data_seed, SPLITS.index(split)]))
    labels = rng.permutation(np.arange(sizes[split]) % 2)
    rows = []
    for idx, label in enumerate(labels):
        sentences = [_random_words(rng), _random_words(rng)]
        if label:
            words = sentences[rng.integers(2)]
            words[rng.integers(len(words))] = MARKER
        rows.append({"sentence1": " ".join(sentences[0]), "sentence2": " ".join(sentences[1]),
                     "label": int(label), "idx": idx})
    return rows


def _random_words(rng: np.random.Generator) -> list[str]:
    count = rng.integers(WORDS_PER_SENTENCE[0], WORDS_PER_SENTENCE[1] + 1)
    lengths = rng.integers(LETTERS_PER_WORD[0], LETTERS_PER_WORD[1] + 1, size=count)
    return ["".join(rng.choice(LETTERS, size=length)) for length in lengths]


@functools.lru_cache(maxsize=None)
def make_synthetic_task(
    num_train: int = 1000, num_validation: int = 200, num_test: int = 200, data_seed: int = 0
) -> Task:
    """The synthetic task with the given split sizes. It is "small": `splits.paper_splits` halves its
    validation split into val/test, as for MRPC. Metrics: accuracy (primary), then binary F1.
    Equal sizes give the same (equal) task."""
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    if min(sizes.values()) < 0:
        raise ValueError(f"synthetic split sizes must be >= 0, got {sizes}")
    return Task(
        name=NAME,
        template=(("sentence1:", "sentence1"), ("sentence2:", "sentence2")),
        label_names=("absent", "present"),
        metric_names=("accuracy", "f1"),
        size="small",
        max_source_length=128,
        row_generator=functools.partial(synthetic_rows, sizes=sizes, data_seed=data_seed),
    )
