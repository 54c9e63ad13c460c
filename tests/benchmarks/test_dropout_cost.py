"""benchmarks/dropout_cost.py on the tiny T5: the two variants differ only in their dropout masks."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import dropout_cost

import s3delta_jax.models.t5.model as t5_model
from s3delta_jax.models.dropout import Dropout

TINY = ["--model", "tiny", "--batch-size", "2", "--source-length", "8", "--target-length", "4", "--num-layers", "1",
        "--steps", "2", "--warmup", "1"]


def test_without_dropout_both_variants_compute_the_same_step_and_with_it_different_masks(capsys):
    same = dropout_cost.main([*TINY, "--dropout-rate", "0"])
    masked = dropout_cost.main([*TINY, "--dropout-rate", "0.5"])
    flax_name, hashed_name = dropout_cost.VARIANTS
    assert same[flax_name]["loss"] == same[hashed_name]["loss"]
    assert masked[flax_name]["loss"] != masked[hashed_name]["loss"]
    assert masked[flax_name]["x_flax"] == 1.0 and masked[hashed_name]["x_flax"] > 0
    assert t5_model.Dropout is Dropout  # the swap is undone
    printed = capsys.readouterr().out
    assert printed.count("x flax") == 4 and "hashed Dropout" in printed
