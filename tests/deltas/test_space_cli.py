"""`python -m s3delta_jax.space`, run in-process."""

from __future__ import annotations

import json

from s3delta_jax import space
from s3delta_jax.models import t5


def run(capsys, *argv):
    code = space.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_summary_for_t5_large(capsys):
    code, out, _ = run(capsys, "--model", "t5-large", "--space", "s3pet_mix", "--budget", "1.389e-4", "--json")
    summary = json.loads(out)
    assert code == 0
    assert (summary["candidates"], summary["delta_params"]) == (916, 1_881_088)
    assert (summary["backbone_params"], summary["budget_params"]) == (737_639_424, 102_458)
    assert summary["by_type"] == {
        "lnfit": {"count": 122, "params": 124_928},
        "bitfit": {"count": 410, "params": 567_296},
        "lora": {"count": 288, "params": 884_736},
        "low_rank_adapter": {"count": 96, "params": 304_128},
    }
    assert [rule["matches"] for rule in summary["rules"]] == [288, 288, 122, 122, 96]


def test_baseline_table_and_local_config_dir(capsys, tmp_path):
    code, out, _ = run(capsys, "--model", "t5-large", "--baseline", "bitfit", "--budget", "3.48e-5")
    assert code == 0
    assert "bitfit                   411       599,396" in out and "budget 3.48e-05 -> 25,669 parameters" in out
    (tmp_path / "config.json").write_text(json.dumps(t5.get_config("t5-small").to_hf_dict()))
    code, out, _ = run(capsys, "--model", str(tmp_path), "--space", "s3pet_lora", "--json")
    summary = json.loads(out)
    assert (summary["candidates"], summary["delta_params"], summary["vocab_size"]) == (6 * 12, 12 * 4 * 1024 + 12 * 2 * 2560, 32100)


def test_bad_model_is_a_one_line_error(capsys, tmp_path):
    code, out, err = run(capsys, "--model", str(tmp_path))
    assert code == 2 and out == "" and err == f"error: --model '{tmp_path}': no config.json in '{tmp_path}': pass a Hugging Face checkpoint directory\n"
    code, _, err = run(capsys, "--model", "t5-huge")
    assert code == 2 and err.startswith("error: --model 't5-huge': model.random_init needs a preset name, got 't5-huge'")


def test_minilm_mix_space_counts(capsys):
    """The BERT mix space on all-MiniLM-L6-v2's shapes: 110 candidates, 86,448 parameters."""
    code, out, _ = run(capsys, "--model", "minilm-l6", "--space", "s3pet_mix", "--budget", "2e-4", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["family"] == "bert"
    assert (summary["candidates"], summary["delta_params"]) == (110, 86_448)
    assert (summary["backbone_params"], summary["budget_params"]) == (22_565_376, 4_513)
    assert summary["by_type"] == {
        "lora": {"count": 36, "params": 41_472},
        "bitfit": {"count": 49, "params": 25_728},
        "lnfit": {"count": 13, "params": 4_992},
        "low_rank_adapter": {"count": 12, "params": 14_256},
    }
