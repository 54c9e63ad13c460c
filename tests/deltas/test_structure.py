"""Structure files: round trips in our format and the reference's, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s3delta_jax.deltas import (
    StructureError,
    budget_params,
    candidates_from_mask,
    expand,
    get_delta_type,
    hf_module_name,
    load_reference_structure,
    load_structure,
    save_reference_structure,
    save_structure,
    structure_from_candidates,
    structure_to_json,
)
from s3delta_jax.models.t5.spaces import SPACES as T5_SPACES

T5_LARGE = 737_639_424


@pytest.fixture(scope="module")
def mix(t5_large_positions):
    return expand(T5_SPACES["s3pet_mix"], t5_large_positions).candidates


@pytest.fixture(scope="module")
def searched(mix):
    """A structure as the search writes it: 40 chosen candidates, alpha and p for all 916."""
    rng = np.random.default_rng(0)
    mask = np.zeros(len(mix), bool)
    mask[rng.choice(len(mix), 40, replace=False)] = True
    chosen = candidates_from_mask(mix, mask)
    alpha = rng.normal(size=len(mix))
    return structure_from_candidates(
        chosen, backbone="t5-large", backbone_params=T5_LARGE, budget=1.389e-4,
        budget_params=budget_params(1.389e-4, T5_LARGE), search_space="s3pet_mix",
        all_candidates=mix, alpha=alpha, p=1 / (1 + np.exp(-alpha)),
    )


def test_round_trip(tmp_path, searched, t5_large_positions, mix):
    path = tmp_path / "structure.json"
    save_structure(path, searched)
    loaded = load_structure(path, t5_large_positions)
    assert loaded.chosen == searched.chosen and loaded.candidates == searched.candidates
    assert (loaded.backbone, loaded.backbone_params, loaded.budget, loaded.budget_params, loaded.search_space) == (
        "t5-large", T5_LARGE, 1.389e-4, 102_458, "s3pet_mix",
    )
    data = json.loads(path.read_text())
    assert data["total_size"] == searched.total_size <= 102_458
    assert len(data["candidates"]) == 916 and sum(c["chosen"] for c in data["candidates"]) == 40
    rebuilt = loaded.candidates_for(t5_large_positions)
    original = [c for c in mix if c.name in {f"{e.path}:{e.key}" for e in searched.chosen}]
    assert [(c.position, c.delta_type, c.kwargs, c.size, c.pass_index) for c in rebuilt] == [
        (c.position, c.delta_type, c.kwargs, c.size, c.pass_index) for c in original
    ]
    assert [c.index for c in rebuilt] == list(range(40))


def test_reference_format_round_trip(tmp_path, searched, t5_large_positions):
    path = tmp_path / "reference.json"
    save_reference_structure(path, searched)
    passes = json.loads(path.read_text())
    assert len(passes) == 2 and all(isinstance(p, dict) for p in passes)
    for entry in searched.chosen:
        delta_type = get_delta_type(entry.delta_type)
        written = passes[entry.pass_index][hf_module_name(entry.path)][delta_type.slot]
        assert written[delta_type.reference_name] == delta_type.to_reference_kwargs(entry.kwargs)
    loaded = load_reference_structure(path, t5_large_positions)
    assert sorted(loaded.chosen, key=str) == sorted(searched.chosen, key=str)


REFERENCE_SAMPLE = [
    {
        "encoder.block.4.layer.0.SelfAttention.q": {"parallel": {"Lora": {"lora_r": 1}}},
        "encoder.block.9.layer.0.SelfAttention.v": {"parallel": {"Lora": {}}},  # reference default: r = 8
        "encoder.block.22.layer.0.layer_norm": {"parallel": {"LNFit": {}}, "sequential": {"BitFitParallel": {}}},
        "decoder.block.20.layer.1.layer_norm": {"sequential": {"BitFitParallel": {}}},
        "decoder.final_layer_norm": {"parallel": {"LNFit": {}}},
        "lm_head": {"sequential": {"BitFitParallel": {}}},
    },
    {"decoder.block.3.layer.2.DenseReluDense": {"sequential": {"LowRankAdapter": {}}}},
]


def test_reference_import(tmp_path, t5_large_positions):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(REFERENCE_SAMPLE))
    structure = load_reference_structure(path, t5_large_positions)
    assert [(e.path, e.delta_type, e.size, e.pass_index) for e in structure.chosen] == [
        ("encoder/block_4/layer_0/SelfAttention/q", "lora", 2048, 0),
        ("encoder/block_9/layer_0/SelfAttention/v", "lora", 8 * 2048, 0),
        ("encoder/block_22/layer_0/layer_norm", "lnfit", 1024, 0),
        ("encoder/block_22/layer_0/layer_norm", "bitfit", 1024, 0),
        ("decoder/block_20/layer_1/layer_norm", "bitfit", 1024, 0),
        ("decoder/final_layer_norm", "lnfit", 1024, 0),
        ("shared@attend", "bitfit", 32100, 0),
        ("decoder/block_3/layer_2/DenseReluDense", "low_rank_adapter", 3168, 1),
    ]
    assert structure.total_size == 2048 + 16384 + 4 * 1024 + 32100 + 3168
    exported = tmp_path / "exported.json"
    save_reference_structure(exported, structure)
    again = json.loads(exported.read_text())
    assert again[0]["encoder.block.9.layer.0.SelfAttention.v"] == {"parallel": {"Lora": {"lora_r": 8, "lora_alpha": 16}}}
    assert again[1] == {"decoder.block.3.layer.2.DenseReluDense": {"sequential": {"LowRankAdapter": {"reduction_factor": 32, "low_rank_rank": 1}}}}
    assert load_reference_structure(exported, t5_large_positions).chosen == structure.chosen


def _edit(structure_json: dict, edit) -> dict:
    data = json.loads(json.dumps(structure_json))
    edit(data)
    return data


def _set(path, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(path):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _over_budget(data):
    data["budget"] = {"value": None, "params": 20}


@pytest.mark.parametrize(
    "edit, message",
    [
        (_delete(("chosen", 3, "size")), "missing field 'chosen[3].size'"),
        (_set(("chosen", 3, "delta_type"), "prefix"), "chosen[3]: unknown delta type 'prefix'"),
        (_set(("chosen", 3, "kwargs"), {"rank": 2}), "chosen[3]: "),
        (_set(("chosen", 3, "size"), "big"), "field 'chosen[3].size' must be int, got 'big'"),
        (_set(("total_size",), 5), "total_size 5 but the chosen sizes add up to"),
        (_set(("schema_version",), 7), "schema_version 7 is not supported (expected 1)"),
        (_set(("budget", "params"), 99), "budget.params 99 but budget 0.0001389 of 737639424 is 102458"),
        (_over_budget, "is over the budget of 20 parameters"),
        (_set(("chosen", 0, "path"), "encoder/block_99/layer_0/SelfAttention/q"), "chosen[0] "),
    ],
)
def test_bad_structure_files(tmp_path, searched, t5_large_positions, edit, message):
    data = _edit(structure_to_json(searched), edit)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(StructureError) as error:
        load_structure(path, t5_large_positions)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_structure_that_does_not_fit_the_backbone(tmp_path, searched, tiny_t5, t5_large_positions):
    path = tmp_path / "structure.json"
    save_structure(path, searched)
    first = searched.chosen[0]
    without_first = [p for p in t5_large_positions if p.name != first.path]
    with pytest.raises(StructureError, match=rf"{path}: chosen\[0\] {first.delta_type} at {first.path}: no such position in the given backbone"):
        load_structure(path, without_first)
    searched_on_large = structure_from_candidates(
        [c for c in expand(T5_SPACES["s3pet_lora"], t5_large_positions).candidates if c.position.name == "encoder/block_0/layer_0/SelfAttention/q"]
    )
    save_structure(path, searched_on_large)
    with pytest.raises(StructureError, match=r"chosen\[0\] lora at encoder/block_0/layer_0/SelfAttention/q: size 2048 in the file but 96 on the given backbone"):
        load_structure(path, tiny_t5.positions)


def test_malformed_json(tmp_path, t5_large_positions):
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1, "chosen": [')
    with pytest.raises(StructureError, match=r"broken.json: not valid JSON \(Expecting value at line 1"):
        load_structure(path)
    with pytest.raises(StructureError, match="no such structure file"):
        load_structure(tmp_path / "missing.json")
    path.write_text("[1, 2]")
    with pytest.raises(StructureError, match="top level must be a JSON object"):
        load_structure(path)


@pytest.mark.parametrize(
    "sample, message",
    [
        ([{"encoder.block.99.layer.0.SelfAttention.q": {"parallel": {"Lora": {}}}}], "no such module in the given backbone"),
        ([{"encoder.block.0.layer.0.SelfAttention.q": {"sequential": {"Lora": {}}}}], "Lora belongs in the 'parallel' slot"),
        ([{"encoder.block.0.layer.0.SelfAttention.q": {"parallel": {"Prefix": {}}}}], "unknown reference delta type 'Prefix'"),
        ([{"encoder.block.0.layer.0.SelfAttention.q": {"parallel": {"Lora": {"lora_rank": 1}}}}], "unknown argument 'lora_rank'"),
        ([{"encoder.block.0.layer.0.layer_norm": {"parallel": {"Lora": {}}}}], "lora cannot act on the norm position"),
        ({"a": 1}, "must be a JSON list of objects"),
    ],
)
def test_bad_reference_files(tmp_path, t5_large_positions, sample, message):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(sample))
    with pytest.raises(StructureError) as error:
        load_reference_structure(path, t5_large_positions)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_structure_over_its_budget_cannot_be_made(mix):
    with pytest.raises(StructureError, match="total size 1881088 is over the budget of 102458 parameters"):
        structure_from_candidates(mix, backbone_params=T5_LARGE, budget=1.389e-4, budget_params=102_458)
