"""Two processes on this machine (jax.distributed over localhost, CPU collectives over gloo), one
device each, each loading half of every batch: the same search as one process on one device."""

from __future__ import annotations

import socket

import numpy as np
from scale_runs import LOSS_RTOL, SMOKE_OVERRIDES, assert_same_structure, device_env, driver_records, losses, start_driver


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
