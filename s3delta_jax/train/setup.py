"""What both programs build first from a config: the workdir, the backbone, its positions, and the task's data."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from s3delta_jax import data as data_lib
from s3delta_jax.deltas.positions import Position, discover_positions
from s3delta_jax.models import t5
from s3delta_jax.models.tokenizers import Tokenizer, get_tokenizer
from s3delta_jax.train import outputs
from s3delta_jax.train.distributed import start_processes
from s3delta_jax.train.sharding import Partitioner, build_mesh

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """The frozen model: `model.apply({'params': params}, ...)`; `num_params` is the budget's denominator
    (after the vocabulary slice, as in the reference). `params` are global arrays laid out on the mesh
    by `partitioner.param_shardings`."""

    name: str
    model: t5.T5ForConditionalGeneration
    params: Any
    tokenizer: Tokenizer
    num_params: int
    partitioner: Partitioner

    @property
    def config(self) -> t5.T5Config:
        return self.model.config


def start_run(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Joins the processes of a multi-host run, creates `workdir` and writes config.json into it
    (process 0). Returns whether this process is the one that writes outputs."""
    start_processes(config.distributed)
    writer = outputs.is_writer()
    os.makedirs(workdir, exist_ok=True)
    if writer:
        outputs.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return writer


def load_backbone(model_config: ml_collections.ConfigDict, seed: int,
                  mesh_config: ml_collections.ConfigDict) -> Backbone:
    """The T5 named by `model_config` (hub id, local directory, or a preset with random weights),
    sharded over the mesh of `mesh_config`: random weights are created in place, shard by shard;
    loaded weights are cut into shards on the host."""
    if model_config.dtype not in DTYPES:
        raise ValueError(f"model.dtype {model_config.dtype!r} is not one of {', '.join(DTYPES)}")
    dtype = DTYPES[model_config.dtype]
    vocab_size = model_config.vocab_size or None
    mesh = build_mesh(mesh_config)
    if model_config.random_init:
        overrides = dict(model_config.config_overrides)
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        config = t5.get_config(model_config.name, **overrides, dropout_rate=model_config.dropout_rate,
                               dtype=dtype, param_dtype=dtype)
        partitioner = _partitioner(mesh, config, mesh_config.rules)
        init = jax.jit(functools.partial(t5.init_params, config), out_shardings=partitioner.param_shardings)
        params = init(jax.random.PRNGKey(seed))
    else:
        with jax.default_device(_host_device()):
            model, host_params = t5.from_pretrained(model_config.name, dtype=dtype, vocab_size=vocab_size)
        config = dataclasses.replace(model.config, dropout_rate=model_config.dropout_rate)
        partitioner = _partitioner(mesh, config, mesh_config.rules)
        params = partitioner.place(host_params, partitioner.param_shardings)
    tokenizer = get_tokenizer(model_config.tokenizer or model_config.name)
    num_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    return Backbone(model_config.name, t5.T5ForConditionalGeneration(config), params, tokenizer, num_params,
                    partitioner)


def _host_device() -> jax.Device:
    """Where loaded weights wait to be cut into shards: host memory, not one accelerator's (unless
    JAX_PLATFORMS leaves the CPU out)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def _partitioner(mesh: jax.sharding.Mesh, config: t5.T5Config, rule_overrides) -> Partitioner:
    return Partitioner.create(mesh, t5.logical_axes(config), t5.param_shapes(config), tuple(rule_overrides))


def backbone_positions(backbone: Backbone) -> list[Position]:
    """The backbone's delta positions, traced from shapes only."""
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return discover_positions(backbone.model, ids, ids, ids, ids, deterministic=True,
                              variables={"params": backbone.params})


@dataclasses.dataclass(frozen=True)
class TaskData:
    """The task's splits for one seed as examples and token ids (train also halved for the search)."""

    task: data_lib.Task
    examples: dict[str, list[data_lib.Example]]
    encoded: dict[str, data_lib.EncodedExamples]


def load_task_data(data_config: ml_collections.ConfigDict, tokenizer: Tokenizer, seed: int,
                   with_search_halves: bool) -> TaskData:
    """Reads the task's train/validation rows, splits them as the paper does and encodes every split.

    Splits: 'train', 'validation', 'test', and with `with_search_halves` 'delta' and 'alpha'.
    """
    task = data_lib.get_task(data_config.task, data_config.fix_reference_bugs)
    rows = {split: data_lib.load_split(task, split, data_config.path or None) for split in ("train", "validation")}
    splits = data_lib.paper_splits(task, rows["train"], rows["validation"], seed)
    split_rows = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    if with_search_halves:
        split_rows["delta"], split_rows["alpha"] = data_lib.search_halves(splits.train, seed)
    examples = {split: task.examples(r) for split, r in split_rows.items()}
    max_source_length = data_config.max_source_length or None
    encoded = {
        split: data_lib.encode_examples(task, ex, tokenizer, max_source_length=max_source_length)
        for split, ex in examples.items()
    }
    return TaskData(task, examples, encoded)


def train_batches(encoded: data_lib.EncodedExamples, batch_size: int, seed: int, partitioner: Partitioner,
                  field: str) -> data_lib.TrainBatches:
    """Shuffled batches of this process's rows (the same global order on every mesh); `field` names
    the batch size setting in errors."""
    partitioner.check_batch_size(batch_size, field)
    index, count = partitioner.host_slice
    return data_lib.TrainBatches(encoded, batch_size, seed=seed, process_index=index, process_count=count)


def seq2seq_loss(config: t5.T5Config):
    """`loss(apply_fn, params, batch, dropout_key)`: HF mean token cross-entropy of a T5 on a batch
    (int32 arrays [b, len], labels padded with -100), dropout on."""

    def loss(apply_fn, params, batch, dropout_key) -> jax.Array:
        decoder_input_ids = t5.shift_right(batch["labels"], config.decoder_start_token_id, config.pad_token_id)
        logits = apply_fn(
            {"params": params}, batch["input_ids"], batch["attention_mask"], decoder_input_ids,
            batch["decoder_attention_mask"], deterministic=False, rngs={"dropout": dropout_key},
        )
        return t5.cross_entropy_loss(logits, batch["labels"])

    return loss
