"""What both programs build first from a config: the workdir, the frozen backbone on its mesh, and the data."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from s3delta_jax import data as data_lib
from s3delta_jax.deltas.scan import stack_layers
from s3delta_jax.models.backbone import Backbone, SearchModel
from s3delta_jax.train import outputs
from s3delta_jax.train.sharding import Partitioner, build_mesh
from s3delta_jax.train.workdir import check_run_identity, prepare_workdir


def check_run(config: ml_collections.ConfigDict, workdir: str, fingerprint: dict[str, Any],
              allow_config_change: Sequence[str] = ()) -> None:
    """Checks that `workdir` can hold this run: a new one, or this very run to resume (see
    train/workdir.py; `fingerprint` identifies the backbone and anything else the run depends on).
    Creates the directory if missing and writes nothing into it: `record_run` does, once the run's
    inputs have loaded, so that a run refused for bad input leaves the workdir as it was."""
    check_run_identity(prepare_workdir(workdir), config.to_dict(), fingerprint, allowed=allow_config_change,
                       write=False)


def record_run(config: ml_collections.ConfigDict, workdir: str, fingerprint: dict[str, Any],
               allow_config_change: Sequence[str] = ()) -> bool:
    """Records the run checked by `check_run` in `workdir` (run.json and config.json, from process 0).
    Returns whether this process writes the outputs. The processes of a multi-host run must have
    joined first (`distributed.start_processes`, before any JAX call)."""
    writer = outputs.is_writer()
    check_run_identity(workdir, config.to_dict(), fingerprint, allowed=allow_config_change, write=writer)
    if writer:
        outputs.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return writer


@dataclasses.dataclass(frozen=True)
class PlacedBackbone:
    """A backbone with its frozen params laid out on the mesh (`partitioner.param_shardings`)."""

    backbone: Backbone
    params: Any
    partitioner: Partitioner


def place_backbone(backbone: Backbone, seed: int, mesh_config: ml_collections.ConfigDict,
                   model: SearchModel | None = None) -> PlacedBackbone:
    """Random weights are created in place, shard by shard; loaded weights are cut into shards on the host.

    `model`: the layout the params take (`backbone.search_model(...)`: stacked for its scanned
    layers); None: the backbone's own. Random weights are the same in either layout.
    """
    model = model or backbone.search_model()
    mesh = build_mesh(mesh_config)
    partitioner = Partitioner.create(mesh, model.logical_axes, model.param_shapes, tuple(mesh_config.rules))
    if backbone.checkpoint_dir is None:
        init = jax.jit(lambda rng: stack_layers(backbone.init_params(rng), model.scans, "params"),
                       out_shardings=partitioner.param_shardings)
        params = init(jax.random.PRNGKey(seed))
    else:
        with jax.default_device(_host_device()):
            host_params = stack_layers(backbone.load_params(), model.scans, "params")
        params = partitioner.place(host_params, partitioner.param_shardings)
    return PlacedBackbone(backbone, params, partitioner)


def _host_device() -> jax.Device:
    """Where loaded weights wait to be cut into shards: host memory, not one accelerator's (unless
    JAX_PLATFORMS leaves the CPU out)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


@dataclasses.dataclass(frozen=True)
class TaskData:
    """The task's splits for one seed as examples and token ids (train also halved for the search)."""

    task: data_lib.Task
    examples: dict[str, list[data_lib.Example]]
    encoded: dict[str, data_lib.EncodedExamples]


def load_task_data(data_config: ml_collections.ConfigDict, backbone: Backbone, seed: int,
                   search_data: str | None = None) -> TaskData:
    """Reads the task's train/validation rows, splits them as the paper does and encodes every split.

    Splits: 'train', 'validation', 'test', and with `search_data` (a `data.SEARCH_DATA_SPLITS` name,
    the config's `search.data_split`) the search's 'delta' and 'alpha'.
    """
    task = data_lib.get_task(data_config.task, data_config.fix_reference_bugs)
    rows = {split: data_lib.load_split(task, split, data_config.path or None) for split in ("train", "validation")}
    splits = data_lib.paper_splits(task, rows["train"], rows["validation"], seed)
    split_rows = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    if search_data is not None:
        split_rows["delta"], split_rows["alpha"] = data_lib.search_rows(splits.train, seed, search_data)
    examples = {split: task.examples(r) for split, r in split_rows.items()}
    max_length = data_config.max_source_length or None
    encoded = {split: backbone.encode(task, ex, max_length) for split, ex in examples.items()}
    return TaskData(task, examples, encoded)


def train_batches(encoded: data_lib.EncodedExamples, config: ml_collections.ConfigDict, phase: str,
                  seed: int, partitioner: Partitioner) -> data_lib.TrainBatches:
    """Shuffled batches of this process's rows (the same global order on every mesh) for `phase`
    ("search" or "retrain": its batch size and grouping by length), padded as `config.data` says."""
    phase_config = config[phase]
    partitioner.check_batch_size(phase_config.batch_size, f"{phase}.batch_size")
    index, count = partitioner.host_slice
    return data_lib.TrainBatches(encoded, phase_config.batch_size, seed=seed, process_index=index,
                                 process_count=count, pad_multiple=config.data.pad_multiple,
                                 group_batches=phase_config.group_batches)
