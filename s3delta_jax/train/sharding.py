"""The device mesh, the logical-axis rules, and where every array of a run lives (design section 5).

The mesh has three axes, in this order, sized by `config.mesh` (1 = unused, -1 = the rest):
  data   data parallelism: every batch is split over it
  fsdp   batches are split over it too, and so is the backbone's 'embed' dimension (ZeRO-3 style)
  model  tensor parallelism: the backbone's 'vocab', 'heads', 'joined_kv' and 'mlp' dimensions
Its axes are `AxisType.Auto` (`jax.make_mesh` would make them Explicit, which breaks
`with_sharding_constraint`), so XLA's partitioner propagates the layouts through the program.

A model names the dimensions of its parameters and activations (T5: `t5.logical_axes`, and
`nn.with_logical_constraint` inside it); DEFAULT_RULES below map those logical names to mesh axes,
the t5x way, and are the only rules. `config.mesh.rules` replaces entries by logical name. A rule
whose mesh axes do not evenly divide a parameter dimension of that name (4 heads over model=8, a
vocabulary of 259) is dropped for that model with a logged warning: jit needs even parameter
shardings, and the activations then keep the same layout.

Placement: the backbone `params` by the rules; `delta`, gates, optimizer states and RNG keys
replicated (they are tiny); batches split over ('data', 'fsdp') along their rows. The partitioned
programs trace under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`, without which the
model's activation constraints would be silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from s3delta_jax.errors import UserError

log = logging.getLogger(__name__)
MESH_AXES = ("data", "fsdp", "model")
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("mlp", "model"),
    ("kv", None),
    ("relpos_buckets", None),
    ("layers", None),  # the leading axis of scanned layers' params (models/t5 scan_layers)
    ("embed", "fsdp"),  # parameters only: in activations 'batch' already holds 'fsdp'
)


class MeshConfigError(UserError):
    """A mesh or rule setting that cannot work on the devices at hand."""


def mesh_shape(mesh_config: ml_collections.ConfigDict, device_count: int) -> tuple[int, ...]:
    """The sizes of MESH_AXES for `device_count` devices; one axis may be -1 (all that is left)."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    wildcards = [axis for axis, size in sizes.items() if size == -1]
    if len(wildcards) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise MeshConfigError(f"mesh sizes {sizes} are invalid: use positive sizes, at most one of them -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if wildcards and device_count % fixed == 0:
        sizes[wildcards[0]] = device_count // fixed
    if math.prod(sizes.values()) != device_count:
        raise MeshConfigError(
            f"mesh {' x '.join(f'{a}={s}' for a, s in sizes.items())} does not fit {device_count} device(s): "
            f"make --config.mesh.{{data,fsdp,model}} multiply to {device_count}, or set one of them to -1")
    return tuple(sizes[axis] for axis in MESH_AXES)


def build_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
    """The mesh of `config.mesh` over every device of every process, with Auto axes."""
    shape = mesh_shape(mesh_config, jax.device_count())
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _checked_rule(rule: Any) -> tuple[str, MeshAxes]:
    """(logical name, mesh axes) from a config entry, or a one-line error."""
    name, axes = rule if isinstance(rule, (tuple, list)) and len(rule) == 2 else (None, None)
    axes = tuple(axes) if isinstance(axes, list) else axes
    if not isinstance(name, str) or not (axes is None or isinstance(axes, (str, tuple))) \
            or not set(_as_tuple(axes)) <= set(MESH_AXES):
        raise MeshConfigError(
            f"bad mesh rule {rule!r}: write (logical name, mesh axis) with a mesh axis among "
            f"{', '.join(MESH_AXES)}, a tuple of them, or None, e.g. --config.mesh.rules=\"(('mlp', None),)\"")
    return name, axes


def logical_rules(overrides: Sequence[Any] = ()) -> Rules:
    """DEFAULT_RULES with `overrides` ((logical name, mesh axis | tuple of axes | None), ...) applied:
    an override replaces the default of its name in place; new names come last."""
    replaced = dict(_checked_rule(rule) for rule in overrides)
    rules = [(name, replaced.pop(name, axes)) for name, axes in DEFAULT_RULES]
    return tuple(rules + list(replaced.items()))


def dimension_sizes(logical_specs: Any, shapes: Any) -> dict[str, set[int]]:
    """{logical name: the sizes of the parameter dimensions carrying it}. `logical_specs` is a pytree of
    PartitionSpecs of logical names (`t5.logical_axes`), `shapes` the matching arrays or shape structs."""
    sizes: dict[str, set[int]] = {}
    specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for spec, leaf in zip(specs, jax.tree.leaves(shapes), strict=True):
        for name, size in zip(spec, leaf.shape):
            if isinstance(name, str):
                sizes.setdefault(name, set()).add(int(size))
    return sizes


def fit_rules(rules: Rules, mesh: Mesh, sizes: dict[str, set[int]]) -> tuple[Rules, list[str]]:
    """(rules with every rule that would split a dimension of `sizes` unevenly set to None, notes)."""
    fitted, notes = [], []
    for name, axes in rules:
        shards = math.prod(mesh.shape[axis] for axis in _as_tuple(axes))
        uneven = sorted(size for size in sizes.get(name, ()) if size % shards)
        if uneven:
            notes.append(f"logical axis {name!r} of size {uneven[0]} does not split evenly over mesh axes "
                         f"{axes!r} ({shards} devices): it stays unsharded")
            axes = None
        fitted.append((name, axes))
    return tuple(fitted), notes


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """Where a run's arrays live on `mesh` under `rules`, and how its programs are compiled.

    Attributes:
      mesh: the device mesh (axes MESH_AXES).
      rules: the logical-axis rules, fitted to the model.
      param_shardings: a NamedSharding per backbone parameter (the params' pytree, or a prefix of it).
    """

    mesh: Mesh
    rules: Rules
    param_shardings: Any

    @classmethod
    def create(cls, mesh: Mesh, param_specs: Any, param_shapes: Any, rule_overrides: Sequence[Any] = ()) -> Partitioner:
        """For a model whose parameters have logical `param_specs` and shapes `param_shapes`."""
        rules, notes = fit_rules(logical_rules(rule_overrides), mesh, dimension_sizes(param_specs, param_shapes))
        if jax.process_index() == 0:
            for note in notes:
                log.warning("mesh %s: %s", dict(mesh.shape), note)
        return cls(mesh, rules, nn.logical_to_mesh_sharding(param_specs, mesh, rules))

    @classmethod
    def single_device(cls) -> Partitioner:
        """Everything on the first local device: a 1 x 1 x 1 mesh, parameters unsplit."""
        mesh = Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1), MESH_AXES,
                    axis_types=(AxisType.Auto,) * len(MESH_AXES))
        return cls(mesh, DEFAULT_RULES, NamedSharding(mesh, PartitionSpec()))

    def describe(self) -> dict[str, Any]:
        """{'mesh': {axis: size}, 'processes': count}, for results files."""
        return {"mesh": dict(self.mesh.shape), "processes": jax.process_count()}

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @functools.cached_property
    def batch(self) -> NamedSharding:
        """Of batch arrays [rows, ...] (token ids [rows, length], labels [rows]): rows split over the mesh
        axes of the 'batch' rule, every other dimension whole."""
        return nn.logical_to_mesh_sharding(PartitionSpec("batch"), self.mesh, self.rules)

    @functools.cached_property
    def batch_shards(self) -> int:
        """Into how many blocks of rows a batch is split."""
        return math.prod(self.mesh.shape[axis] for axis in _as_tuple(self.batch.spec[0]))

    def check_batch_size(self, batch_size: int, field: str) -> None:
        """A one-line error unless `batch_size` splits evenly over the batch shards."""
        if batch_size % self.batch_shards:
            raise MeshConfigError(
                f"{field}={batch_size} does not split over the {self.batch_shards} batch shards of mesh "
                f"{dict(self.mesh.shape)}: use a multiple of {self.batch_shards} or smaller data/fsdp axes")

    @functools.cached_property
    def host_slice(self) -> tuple[int, int]:
        """(index, count): this process feeds block `index` of `count` equal row blocks of every batch
        (the rows its devices hold); processes that hold the same rows load the same block."""
        rows = self.batch_shards
        sharding = NamedSharding(self.mesh, PartitionSpec(self.batch.spec[0]))
        starts = sorted({index[0].start or 0 for index in sharding.addressable_devices_indices_map((rows,)).values()})
        block = len(starts)
        if starts != list(range(starts[0], starts[0] + block)) or starts[0] % block:
            raise MeshConfigError(
                f"the devices of process {jax.process_index()} hold rows {starts} of {rows} batch blocks, not one "
                "contiguous block: order the mesh so that each host's devices are adjacent along 'data'")
        return starts[0] // block, rows // block

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global batch arrays [rows, length] from this process's block of rows (see `host_slice`)."""
        count = self.host_slice[1]
        return {name: jax.make_array_from_process_local_data(
                    self.batch, array, (array.shape[0] * count, *array.shape[1:]))
                for name, array in local.items()}

    def place(self, tree: Any, shardings: Any) -> Any:
        """`tree` (host or single-device arrays, the same on every process) as global arrays laid out by
        `shardings` (a pytree prefix of `tree`); each device receives only its own shard."""

        def put(sharding: NamedSharding, subtree: Any) -> Any:
            return jax.tree.map(lambda array: _global_array(np.asarray(array), sharding), subtree)

        return jax.tree.map(put, shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))

    def replicate(self, tree: Any) -> Any:
        """`tree` copied onto every device."""
        return self.place(tree, self.replicated)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The context in which the model's logical activation constraints take effect."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def step_jit(self, num_batches: int) -> Callable[[Callable], Callable]:
        """The `jit` hook of Searcher / Retrainer: `step(state, params, *batches) -> (state, metrics)` with
        the state replicated (and donated), the params sharded, each of `num_batches` batches split."""
        in_shardings = (self.replicated, self.param_shardings, *[self.batch] * num_batches)
        return lambda step: self.jit(step, in_shardings, self.replicated, donate_argnums=(0,))

    def jit(self, fn: Callable, in_shardings: Any, out_shardings: Any,
            donate_argnums: tuple[int, ...] = ()) -> Callable:
        """`jax.jit(fn)` with explicit shardings (pjit), traced and run under `activate()`."""
        compiled = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)

        @functools.wraps(fn)
        def run(*args):
            with self.activate():
                return compiled(*args)

        return run


def _global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
