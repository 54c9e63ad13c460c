"""Runs the smoke search in one process of a scale test (which sets XLA_FLAGS before jax is imported).

    python tests/scale/mesh_driver.py '{"runs": [...], "placements": [...]}'

`runs`: [{"workdir": DIR, "overrides": {"mesh.data": 2, "mesh.model": 4, "search.max_steps": 20}}, ...],
each a `run_search` of configs/mrpc.py:smoke (or, with "encoder": true, of the tiny random encoder of
scale_runs.encoder_config) with those fields replaced, in order (a run on a workdir that already holds
a checkpoint resumes from it, changing the fields its "allow_config_change" names; `distributed.*`
fields make it one process of many).
`placements`: [{"mesh.data": 2, ...}, ...], meshes on which only the backbone is built.
For every run and placement, one JSON line on stdout: {"mesh": {axis: size}, "process": index,
"host_slice": [block, blocks], "weights": {path: {"spec": [...], "shards": [[shape], ...]}}}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs import mrpc  # noqa: E402
from scale_runs import EMBEDDING, Q, WI, encoder_config  # noqa: E402
from s3delta_jax.models.registry import load_backbone  # noqa: E402
from s3delta_jax.train.prepare import place_backbone  # noqa: E402
from s3delta_jax.train.searching import run_search  # noqa: E402


def smoke_config(overrides: dict, encoder: bool = False):
    config = encoder_config() if encoder else mrpc.get_config("smoke")
    config.update_from_flattened_dict(overrides)
    return config


def placement(config) -> dict:
    """Where the backbone of `config` puts a few weights (mesh spec, this process's shard shapes), and which
    block of every batch this process loads."""
    placed = place_backbone(load_backbone(config.model), config.seed, config.mesh)
    weights = {}
    for path in (EMBEDDING, Q, WI):
        node = placed.params
        for name in path.split("/"):
            node = node[name]
        weights[path] = {
            "spec": [list(axes) if isinstance(axes, tuple) else axes for axes in node.sharding.spec],
            "shards": [list(shard.data.shape) for shard in node.addressable_shards],
        }
    partitioner = placed.partitioner
    return {"mesh": dict(partitioner.mesh.shape), "process": jax.process_index(),
            "host_slice": list(partitioner.host_slice), "weights": weights}


def main(spec: dict) -> None:
    for run in spec.get("runs", []):
        config = smoke_config(run["overrides"], run.get("encoder", False))
        run_search(config, run["workdir"], run.get("allow_config_change", ()))
        record = {"workdir": run["workdir"]}
        if not run.get("encoder", False):
            record.update(placement(config))
        print(json.dumps(record), flush=True)
    for overrides in spec.get("placements", []):
        print(json.dumps(placement(smoke_config(overrides))), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
