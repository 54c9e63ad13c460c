"""`python -m s3delta_jax.export` on re-training workdirs: a real run_retrain.py workdir exported merged
predicts its test_predictions.txt in PyTorch, and every refusal is exit 2, one line, nothing written.

The refused workdirs are written directly (config.json, structure.json, results.json and a best
checkpoint), without training; the one real re-training takes about 10 s."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from configs import mrpc
from export_cases import ATOL, flax_bert_outputs, max_difference, perturbed, torch_inputs
from s3delta_jax import data as data_lib
from s3delta_jax.deltas import Rule, expand, init_delta, save_structure, structure_from_candidates
from s3delta_jax.export import load_retrained, torch_classifier
from s3delta_jax.export.__main__ import main
from s3delta_jax.models.registry import load_backbone
from s3delta_jax.train.checkpoints import RunCheckpoints
from s3delta_jax.train.prepare import load_task_data
from s3delta_jax.train.retraining import run_retrain

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "scale"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import export_predictions  # noqa: E402
from scale_runs import encoder_config  # noqa: E402

ENCODER_RULES = [[Rule(r"self/query", "linear", "lora", {"r": 2}), Rule(r"output/LayerNorm", "norm", "lnfit"),
                  Rule(r"layer_1/output/dense", "linear", "bitfit")]]
ADAPTER_RULES = [[Rule(r"self/query", "linear", "lora"), Rule(r"layer_1/attention", "block", "adapter", {"bottleneck": 4})]]
T5_BITFIT_RULES = [[Rule(r"SelfAttention/q", "linear", "lora"), Rule(r"DenseReluDense/wo", "linear", "bitfit")]]


def structure_file(path: Path, backbone, rules) -> list:
    candidates = expand(rules, backbone.positions()).candidates
    save_structure(path, structure_from_candidates(candidates, backbone_fingerprint=backbone.fingerprint()))
    return candidates


def written_workdir(path: Path, config, rules, checkpoint: bool = True) -> Path:
    """A re-training workdir as run_retrain.py leaves it, with random deltas instead of trained ones."""
    path.mkdir()
    backbone = load_backbone(config.model)
    candidates = structure_file(path / "structure.json", backbone, rules)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    results = {"phase": "retrain", "structure": str(path / "structure.json"), "backbone": backbone.fingerprint()}
    (path / "results.json").write_text(json.dumps(results))
    if checkpoint:
        key = jax.random.PRNGKey(0)
        task = data_lib.get_task(config.data.task, config.data.fix_reference_bugs)
        head = backbone.task_head(task, config.eval.method, config.eval.max_decode_length)
        payload = {"delta": perturbed(init_delta(key, candidates), key, 0.05), "extra": head.init_extra(key)}
        with RunCheckpoints(str(path)) as checkpoints:
            checkpoints.save_best(1, payload, {"step": 1})
    return path


def tree_checksum(path: Path) -> str | None:
    """sha256 of every file's relative path and bytes under `path` (None if it does not exist)."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    """A real 2-step run_retrain.py workdir on the tiny random encoder and the synthetic task."""
    root = tmp_path_factory.mktemp("encoder-run")
    config = encoder_config()
    config.retrain.max_steps = 2
    config.retrain.learning_rate = 2e-2  # two steps then predict both labels (67 / 33)
    structure_file(root / "structure.json", load_backbone(config.model), ENCODER_RULES)
    run_retrain(config, str(root / "retrain"), str(root / "structure.json"))
    return root / "retrain"


def test_the_merged_export_of_a_real_workdir_predicts_its_test_predictions(encoder_run, tmp_path, capsys):
    """benchmarks/export_predictions.py (the check run on MiniLM / MRPC): the merged export (the random
    encoder has no base checkpoint for a PEFT adapter), loaded in PyTorch, predicts every row of the
    run's test_predictions.txt; its logits are ours."""
    assert export_predictions.main(["--workdir", str(encoder_run), "--out", str(tmp_path), "--formats", "merged"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"wrote {tmp_path / 'merged'}/config.json" in printed and f"wrote {tmp_path / 'merged'}/classifier.safetensors" in printed
    assert "merged: 100 test rows, 100 agree with test_predictions.txt (100 rows)" in printed
    assert set((encoder_run / "test_predictions.txt").read_text().split()) == {"0", "1"}

    config = encoder_config()
    encoded = load_task_data(config.data, load_backbone(config.model), config.seed).encoded["test"]
    batch = export_predictions.padded(encoded, slice(0, 32))
    _, flax_logits = flax_bert_outputs(load_retrained(str(encoder_run)), batch)
    with torch.no_grad():
        torch_logits = torch_classifier(str(tmp_path / "merged"))(**torch_inputs(batch)).numpy()
    print(f"workdir export: max |torch - flax| logits {max_difference(torch_logits, flax_logits):.2e}")
    np.testing.assert_allclose(torch_logits, flax_logits, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def refused_workdirs(encoder_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refused")
    only_config = root / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_bytes((encoder_run / "config.json").read_bytes())
    return {
        "finished": encoder_run,
        "adapter": written_workdir(root / "adapter", encoder_config(), ADAPTER_RULES),
        "t5 bitfit": written_workdir(root / "t5-bitfit", mrpc.get_config("smoke"), T5_BITFIT_RULES),
        "no results": only_config,
        "no checkpoint": written_workdir(root / "no-checkpoint", encoder_config(), ENCODER_RULES, checkpoint=False),
    }


@pytest.mark.parametrize("workdir, to, out_has_file, message", [
    ("adapter", "merged", False, "adapter at encoder/layer_1/attention (non-linear)"),
    ("t5 bitfit", "merged", False, "bitfit at encoder/block_0/layer_1/DenseReluDense/wo (the layer has no bias)"),
    ("no results", "merged", False, "has no results.json"),
    ("no checkpoint", "peft", False, "has no best checkpoint"),
    ("finished", "merged", True, "exists and is not empty"),
    ("finished", "peft", False, "has random weights"),
])
def test_refusals_are_one_line_exit_2_and_write_nothing(refused_workdirs, workdir, to, out_has_file, message,
                                                       tmp_path, capsys):
    out = tmp_path / "out"
    if out_has_file:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = tree_checksum(out), tree_checksum(refused_workdirs[workdir])
    with pytest.raises(SystemExit) as exit_info:
        main(["--workdir", str(refused_workdirs[workdir]), "--to", to, "--out", str(out)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert (tree_checksum(out), tree_checksum(refused_workdirs[workdir])) == before
    assert os.listdir(tmp_path) == (["out"] if out_has_file else [])
