"""The task data a program reads: the search's D_delta / D_alpha as `search.data_split` says."""

from collections import Counter

import pytest

from configs import mrpc
from s3delta_jax.models.registry import load_backbone
from s3delta_jax.train.prepare import load_task_data


@pytest.fixture(scope="module")
def smoke():
    config = mrpc.get_config("smoke")
    return config, load_backbone(config.model)


def test_halves_split_train_and_shared_gives_each_level_all_of_it(smoke):
    config, backbone = smoke
    halves = load_task_data(config.data, backbone, config.seed, search_data="halves")
    shared = load_task_data(config.data, backbone, config.seed, search_data="shared")
    train = halves.examples["train"]
    assert len(halves.examples["delta"]) == len(halves.examples["alpha"]) == len(train) // 2
    assert not Counter(map(repr, halves.examples["delta"] + halves.examples["alpha"])) - Counter(map(repr, train))
    assert shared.examples["delta"] == shared.examples["alpha"] == train
    assert [list(ids) for ids in shared.encoded["alpha"].source_ids] == \
        [list(ids) for ids in shared.encoded["train"].source_ids]
    assert "delta" not in load_task_data(config.data, backbone, config.seed).encoded
