"""Mesh sizes, logical-axis rules, the partitioned-jit context and multi-process settings, on the one
device of the test process."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from configs import base
from s3delta_jax.train.distributed import start_processes
from s3delta_jax.errors import UserError
from s3delta_jax.train.sharding import (
    DEFAULT_RULES, MESH_AXES, MeshConfigError, Partitioner, dimension_sizes, fit_rules, logical_rules, mesh_shape,
)


def mesh_config(**sizes) -> ml_collections.ConfigDict:
    config = base.base_config().mesh
    config.update(sizes)
    return config


@pytest.mark.parametrize("sizes,devices,shape", [
    ({}, 1, (1, 1, 1)),
    ({}, 8, (8, 1, 1)),
    ({"model": 4}, 8, (2, 1, 4)),
    ({"data": 2, "fsdp": 2, "model": 2}, 8, (2, 2, 2)),
    ({"data": 1, "model": -1}, 8, (1, 1, 8)),
])
def test_mesh_shape_fills_the_wildcard_axis(sizes, devices, shape):
    assert mesh_shape(mesh_config(**sizes), devices) == shape


@pytest.mark.parametrize("sizes,devices,message", [
    ({"model": 3}, 8, "does not fit 8 device"),
    ({"data": 2, "model": 2}, 8, "multiply to 8"),
    ({"data": -1, "model": -1}, 8, "at most one of them -1"),
    ({"fsdp": 0}, 8, "positive sizes"),
])
def test_bad_mesh_sizes_are_one_line_errors(sizes, devices, message):
    with pytest.raises(MeshConfigError, match=message) as error:
        mesh_shape(mesh_config(**sizes), devices)
    assert "\n" not in str(error.value)


def test_rule_overrides_replace_defaults_in_place_and_append_new_names():
    rules = logical_rules((("mlp", None), ("heads", ["model", "fsdp"]), ("experts", "data")))
    assert [name for name, _ in rules] == [name for name, _ in DEFAULT_RULES] + ["experts"]
    assert dict(rules)["mlp"] is None and dict(rules)["heads"] == ("model", "fsdp")
    assert dict(rules)["vocab"] == "model"


@pytest.mark.parametrize("rule", [("mlp", "tensor"), ("mlp",), "mlp=model", ("mlp", 3)])
def test_bad_rules_are_one_line_errors(rule):
    with pytest.raises(MeshConfigError, match="bad mesh rule"):
        logical_rules((rule,))


def test_rules_that_split_a_dimension_unevenly_are_dropped():
    specs = {"embedding": PartitionSpec("vocab", "embed"), "wi": PartitionSpec("embed", "mlp"),
             "bias": PartitionSpec("relpos_buckets", "heads")}
    shapes = {"embedding": jax.ShapeDtypeStruct((259, 64), jnp.float32),
              "wi": jax.ShapeDtypeStruct((64, 128), jnp.float32),
              "bias": jax.ShapeDtypeStruct((32, 4), jnp.float32)}
    sizes = dimension_sizes(specs, shapes)
    assert sizes == {"vocab": {259}, "embed": {64}, "mlp": {128}, "relpos_buckets": {32}, "heads": {4}}
    fitted, notes = fit_rules(DEFAULT_RULES, AbstractMesh((1, 2, 8), MESH_AXES), sizes)
    fitted = dict(fitted)
    assert fitted["vocab"] is None and fitted["heads"] is None  # 259 and 4 rows over 8 devices
    assert fitted["mlp"] == "model" and fitted["embed"] == "fsdp" and fitted["batch"] == ("data", "fsdp")
    assert len(notes) == 2 and "'vocab' of size 259" in notes[0]


def test_an_explicit_coordinator_needs_a_process_count_and_id():
    config = base.base_config().distributed
    config.coordinator_address = "localhost:1234"
    with pytest.raises(UserError, match="num_processes"):
        start_processes(config)


def test_partitioned_functions_trace_under_the_mesh_and_rules():
    """Without both contexts at trace time the model's activation constraints would be dropped."""
    partitioner = Partitioner.single_device()
    seen = {}

    def fn(x):
        seen["mesh"], seen["rules"] = jax.sharding.get_abstract_mesh().axis_names, nn.get_logical_axis_rules()
        return nn.with_logical_constraint(x * 2, ("batch", "embed"))

    jitted = partitioner.jit(fn, in_shardings=partitioner.batch, out_shardings=partitioner.replicated)
    assert jitted(np.ones((4, 2), np.float32)).tolist() == [[2.0, 2.0]] * 4
    assert seen == {"mesh": MESH_AXES, "rules": partitioner.rules}
    with partitioner.activate():
        lowered = jax.jit(fn).lower(np.ones((4, 2), np.float32)).as_text()
    assert "sharding_constraint" in lowered
    assert "sharding_constraint" not in jax.jit(fn).lower(np.ones((4, 2), np.float32)).as_text()
