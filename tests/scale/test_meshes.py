"""The smoke search on meshes of 8 fake CPU devices: the same losses and gates as one device (scanned
and rematerialised too, with outputs and checkpoints in the unscanned layout, its checkpoint written
on one mesh and resumed on another), backbone weights really split over the devices. And
two processes on this machine (jax.distributed over localhost, CPU collectives over gloo), one device
each, each loading half of every batch: the same search as one process on one device.

One file, so that pytest-xdist (--dist loadfile) runs these tests on one worker with one reference run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from configs import mrpc
from scale_runs import (
    EMBEDDING, LOSS_RTOL, Q, SMOKE_OVERRIDES, STEPS, WI, Job, assert_same_structure, device_env, driver_records, losses,
    start_driver,
)

MESHES = {
    "data8": {"mesh.data": 8},
    "data2_model4": {"mesh.data": 2, "mesh.model": 4},
}
# Meshes on which only the backbone is placed (the search's sharded passes are those of the meshes above).
PLACEMENTS = [{"mesh.data": 1, "mesh.model": 8}, {"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2}]
SCANNED = {"search.scan_layers": True, "search.remat": "full"}
ENCODER_MESH = {"mesh.data": 2, "mesh.model": 4}

_SMOKE = mrpc.get_config("smoke").model.config_overrides
V, D, F = _SMOKE.vocab_size, _SMOKE.d_model, _SMOKE.d_ff
HK = _SMOKE.num_heads * _SMOKE.d_kv


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory, subprocess_env, reference_run):
    """One process with 8 devices: the two meshes, then the scanned search's first 10 steps on
    data2_model4 resumed to 20 on data8. The one-device reference run (started first) shares the two
    cores with it."""
    root = tmp_path_factory.mktemp("meshes")
    runs = [{"workdir": str(root / name), "overrides": {**SMOKE_OVERRIDES, **mesh}} for name, mesh in MESHES.items()]
    runs += [{"workdir": str(root / "scanned"),
              "overrides": {**SMOKE_OVERRIDES, **mesh, **SCANNED, "search.max_steps": steps},
              "allow_config_change": ["safe"]}
             for mesh, steps in ((MESHES["data2_model4"], STEPS // 2), (MESHES["data8"], STEPS))]
    runs.append({"workdir": str(root / "encoder"), "overrides": ENCODER_MESH, "encoder": True})
    job = start_driver({"runs": runs, "placements": PLACEMENTS}, device_env(subprocess_env, 8), root / "log")
    return root, driver_records(job)


@pytest.fixture(scope="module")
def encoder_reference(tmp_path_factory, subprocess_env) -> Job:
    """The tiny encoder's search on one device (started before the mesh runs, so both cores work)."""
    root = tmp_path_factory.mktemp("encoder-one-device")
    return start_driver({"runs": [{"workdir": str(root / "run"), "overrides": {}, "encoder": True}]},
                        device_env(subprocess_env, 1), root / "log")


def test_encoder_losses_and_gates_match_one_device(encoder_reference, mesh_runs):
    """A BERT-family backbone with its classifier head (the search's `extra`) on a data x model mesh."""
    root, _ = mesh_runs
    reference = Path(json.loads(encoder_reference.result().splitlines()[-1])["workdir"])
    np.testing.assert_allclose(losses(root / "encoder"), losses(reference), rtol=LOSS_RTOL)
    assert_same_structure(root / "encoder", reference)


@pytest.mark.parametrize("name", MESHES)
def test_losses_and_gates_match_one_device(mesh_runs, reference_run, name):
    root, _ = mesh_runs
    reference_run.result()
    np.testing.assert_allclose(losses(root / name), losses(reference_run.workdir), rtol=LOSS_RTOL)
    assert_same_structure(root / name, reference_run.workdir)


def test_a_scanned_rematerialised_search_matches_one_device(mesh_runs, reference_run):
    """Layers under nn.scan with remat on data2_model4, resumed on data8: params, delta and Adam's moments
    stacked and placed on each mesh, the same losses and gates as the unscanned search on one device;
    gates.tsv and the checkpoint keep the candidates' own (unscanned) paths."""
    root, _ = mesh_runs
    scanned = root / "scanned"
    reference_run.result()
    np.testing.assert_allclose(losses(scanned), losses(reference_run.workdir), rtol=LOSS_RTOL)
    assert_same_structure(scanned, reference_run.workdir)
    paths = {row.split("\t")[1] for row in (scanned / "gates.tsv").read_text().splitlines()[1:]}
    assert {"encoder/block_1/layer_0/SelfAttention/q", "decoder/block_1/layer_2/DenseReluDense/wo"} <= paths
    assert not any("block_scan" in path for path in paths)
    saved = (scanned / "checkpoints" / "latest" / str(STEPS) / "state" / "_METADATA").read_text()
    assert "block_1" in saved and "block_scan" not in saved


def test_backbone_weights_are_split_over_model_and_fsdp(mesh_runs):
    """Per-device shard shapes: 'joined_kv' (heads x d_kv) and 'mlp' split over model, 'embed' over
    fsdp; the vocabulary (259 rows) and the 4 heads do not divide 4 or 8 devices, so they stay whole."""
    _, records = mesh_runs
    by_mesh = {json.dumps(r["mesh"]): r for r in records if "mesh" in r}  # the encoder run reports none
    expected = {  # the first two: search runs, the others: placements only
        (8, 1, 1): ({EMBEDDING: [V, D], Q: [D, HK], WI: [D, F]}, ["model", "fsdp"]),  # size-1 axes
        (2, 1, 4): ({EMBEDDING: [V, D], Q: [D, HK // 4], WI: [D, F // 4]}, [None, "fsdp"]),
        (1, 1, 8): ({EMBEDDING: [V, D], Q: [D, HK // 8], WI: [D, F // 8]}, [None, "fsdp"]),
        (2, 2, 2): ({EMBEDDING: [V, D // 2], Q: [D // 2, HK // 2], WI: [D // 2, F // 2]}, [None, "fsdp"]),
    }
    for (data, fsdp, model), (shards, embedding_spec) in expected.items():
        record = by_mesh[json.dumps({"data": data, "fsdp": fsdp, "model": model})]
        for path, shape in shards.items():
            assert record["weights"][path]["shards"] == [shape] * 8, (data, fsdp, model, path)
        assert record["weights"][EMBEDDING]["spec"] == embedding_spec
        assert record["weights"][WI]["spec"] == ["fsdp", "model"]


def test_a_scanned_checkpoint_from_one_mesh_resumes_on_another(mesh_runs, reference_run):
    """The stacked state saved unscanned on data2_model4 at step 10, restacked and placed on data8: the
    run ends as the uninterrupted search on one device (its losses and gates: the test above)."""
    root, records = mesh_runs
    resumed = root / "scanned"
    reference_run.result()
    assert [r["mesh"]["model"] for r in records if r.get("workdir") == str(resumed)] == [4, 1]
    results = json.loads((resumed / "results.json").read_text())
    assert results["resumed_from_step"] == STEPS // 2 and results["devices"]["mesh"]["data"] == 8
    assert results["best_step"] == json.loads((reference_run.workdir / "results.json").read_text())["best_step"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_structure_of_one(tmp_path, subprocess_env, reference_run):
    workdir, address = tmp_path / "run", f"localhost:{free_port()}"
    jobs = [
        start_driver({"runs": [{"workdir": str(workdir), "overrides": {
            **SMOKE_OVERRIDES, "distributed.coordinator_address": address,
            "distributed.num_processes": 2, "distributed.process_id": index}}]},
            device_env(subprocess_env, 1), tmp_path / f"process{index}")
        for index in range(2)
    ]
    records = [driver_records(job)[0] for job in jobs]
    assert [r["process"] for r in records] == [0, 1]
    assert [r["host_slice"] for r in records] == [[0, 2], [1, 2]]  # block k of 2 of every batch
    assert records[0]["mesh"] == {"data": 2, "fsdp": 1, "model": 1}
    reference_run.result()
    np.testing.assert_allclose(losses(workdir), losses(reference_run.workdir), rtol=LOSS_RTOL)
    assert_same_structure(workdir, reference_run.workdir)
