"""run_search with search.scan_layers and search.remat (in-process, a few steps of the smoke config):
params placed stacked, the scanned step, evaluation by generation through the scanned decode cache,
outputs and checkpoints in the unscanned layout, and a resume from them."""

from __future__ import annotations

import json
from pathlib import Path

from s3delta_jax.train.config_file import load_config
from s3delta_jax.train.searching import run_search

ROOT = Path(__file__).resolve().parents[2]


def test_a_scanned_rematerialised_search_runs_evaluates_and_writes_unscanned_outputs(tmp_path):
    config = load_config(str(ROOT / "configs" / "mrpc.py:smoke"))
    config.model.config_overrides.num_layers = config.model.config_overrides.num_decoder_layers = 3
    config.search.scan_layers, config.search.remat = True, "full"
    config.search.max_steps, config.search.eval_every = 4, 2
    run_search(config, str(tmp_path))

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["best_step"] in (2, 4) and results["val"] and all(0 <= v <= 100 for v in results["val"].values())
    assert 0 < results["structure"]["trainable_params"] <= results["structure"]["budget_params"]
    rows = (tmp_path / "gates.tsv").read_text().splitlines()[1:]
    paths = {row.split("\t")[1] for row in rows}
    assert len(rows) == results["search_space"]["candidates"]
    assert {"encoder/block_1/layer_0/SelfAttention/q", "decoder/block_2/layer_2/DenseReluDense/wo"} <= paths
    assert not any("block_scan" in path for path in paths)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if any(key.startswith("val_") for key in m)] == [2, 4]

    saved = (tmp_path / "checkpoints" / "latest" / "4" / "state" / "_METADATA").read_text()
    assert "block_1" in saved and "block_scan" not in saved  # the state on disk keeps the candidates' paths
    structure = (tmp_path / "structure.json").read_text()
    run_search(config, str(tmp_path))  # resumes from the last checkpoint: nothing left to run
    assert json.loads((tmp_path / "results.json").read_text())["resumed_from_step"] == 4
    assert (tmp_path / "structure.json").read_text() == structure
