"""Hugging Face T5 checkpoints <-> Flax params.

Reads `config.json` plus `model.safetensors`, sharded safetensors (`model.safetensors.index.json`)
or `pytorch_model.bin` (sharded or not; needs torch). A Hugging Face name maps to a Flax path by
`block.3` <-> `block_3`, `layer.1` <-> `layer_1`, '.' <-> '/', and the leaf `weight` <-> `kernel`
(linear, transposed from torch [out, in] to Flax [in, out]), `embedding` (embeddings) or `scale`
(layer norms).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import flax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.models.t5 import Dtype, T5Config, param_shapes

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

SHARED = "shared.weight"
LM_HEAD = "lm_head.weight"
# Copies of `shared` that Hugging Face ties, and a table that old checkpoints carry but never use.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
UNUSED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_INDEXED_NAME = re.compile(r"(block|layer)_(\d+)")

StateDict = dict[str, np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match the T5 architecture."""


def hf_name(flax_path: tuple[str, ...]) -> str:
    """Flax param path -> Hugging Face name.

    ('encoder', 'block_0', 'layer_1', 'DenseReluDense', 'wi', 'kernel')
    -> 'encoder.block.0.layer.1.DenseReluDense.wi.weight'
    """
    parts: list[str] = []
    for part in flax_path[:-1]:
        match = _INDEXED_NAME.fullmatch(part)
        parts.extend(match.groups() if match else [part])
    return ".".join(parts + ["weight"])


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], config: T5Config, dtype: Dtype = jnp.float32, vocab_size: int | None = None
) -> dict[str, Any]:
    """Flax params (plain nested dict of `dtype` arrays) from a Hugging Face state dict.

    `config` describes the checkpoint; `vocab_size` keeps only the first embedding/lm_head rows.
    An untied model whose file lacks `lm_head.weight` uses `shared.weight` (as Hugging Face does).
    """
    tensors = dict(state_dict)
    if SHARED not in tensors and TIED_COPIES[0] in tensors:
        tensors[SHARED] = tensors[TIED_COPIES[0]]
    for key in TIED_COPIES + UNUSED_KEYS:
        tensors.pop(key, None)
    if config.tie_word_embeddings:
        _drop_tied_lm_head(tensors)
    elif LM_HEAD not in tensors and SHARED in tensors:
        tensors[LM_HEAD] = tensors[SHARED]

    vocab_size = vocab_size or config.vocab_size
    if vocab_size > config.vocab_size:
        raise CheckpointError(
            f"vocab_size={vocab_size} exceeds the checkpoint's {config.vocab_size} rows: pass at most that"
        )
    expected = flax.traverse_util.flatten_dict(param_shapes(config))
    missing = [hf_name(path) for path in expected if hf_name(path) not in tensors]
    unknown = sorted(set(tensors) - {hf_name(path) for path in expected})
    if missing or unknown:
        raise CheckpointError(
            f"checkpoint does not match the T5 config: missing {missing[:4]} ({len(missing)} in all), "
            f"unexpected {unknown[:4]} ({len(unknown)} in all); check config.json belongs to these weights"
        )
    params = {}
    for path, shape in expected.items():
        array = tensors[hf_name(path)]
        torch_shape = shape.shape[::-1] if path[-1] == "kernel" else shape.shape
        if array.shape != torch_shape:
            raise CheckpointError(f"{hf_name(path)} has shape {array.shape}, the config expects {torch_shape}")
        if path[0] in ("shared", "lm_head"):
            array = array[:vocab_size]
        params[path] = jnp.asarray(array.T if path[-1] == "kernel" else array, dtype=dtype)
    return flax.traverse_util.unflatten_dict(params)


def _drop_tied_lm_head(tensors: dict[str, np.ndarray]) -> None:
    """Removes an `lm_head.weight` that duplicates `shared.weight`; a different one is an error."""
    lm_head = tensors.pop(LM_HEAD, None)
    if lm_head is not None and not np.array_equal(lm_head, tensors.get(SHARED)):
        raise CheckpointError(
            "checkpoint has an lm_head.weight that differs from shared.weight but config.json ties "
            "the embeddings: set tie_word_embeddings=false (v1.1 / FLAN-T5 head) in config.json"
        )


def state_dict_from_params(params: Mapping[str, Any]) -> StateDict:
    """Hugging Face state dict (numpy, torch layout) of Flax params; the inverse of `params_from_state_dict`."""
    state_dict = {}
    for path, value in flax.traverse_util.flatten_dict(params).items():
        array = np.asarray(value)
        state_dict[hf_name(path)] = array.T if path[-1] == "kernel" else array
    return state_dict


def read_state_dict(directory: str) -> StateDict:
    """All tensors of the checkpoint in `directory` as numpy arrays, by Hugging Face name."""
    path = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.isfile(path):
        return _read_safetensors(path)
    for index_file, read in ((SAFETENSORS_INDEX, _read_safetensors), (TORCH_INDEX, _read_torch)):
        index_path = os.path.join(directory, index_file)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state_dict: StateDict = {}
            for shard in shards:
                state_dict.update(read(os.path.join(directory, shard)))
            return state_dict
    path = os.path.join(directory, TORCH_FILE)
    if os.path.isfile(path):
        return _read_torch(path)
    raise CheckpointError(
        f"no weights in {directory!r}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} or {TORCH_INDEX}"
    )


def _read_safetensors(path: str) -> StateDict:
    from safetensors.numpy import load_file

    return load_file(path)


def _read_torch(path: str) -> StateDict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint and torch is not installed: install torch or convert it to safetensors"
        ) from None
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    # numpy has no bfloat16: widen those tensors (params_from_state_dict casts to the target dtype)
    return {
        name: (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        for name, tensor in state_dict.items()
    }


def resolve_checkpoint_dir(name_or_path: str) -> str:
    """A local checkpoint directory, or the hub snapshot of a hub id (fails fast when offline)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise CheckpointError(f"{name_or_path!r} is a file: pass the checkpoint directory holding {CONFIG_FILE}")
    from s3delta_jax.models.hub import resolve_offline

    resolve_offline(name_or_path, what="model")
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(name_or_path)
    if any(f.endswith(".safetensors") for f in files):
        weights = ["*.safetensors", SAFETENSORS_INDEX]
    else:
        weights = ["pytorch_model*.bin", TORCH_INDEX]
    return snapshot_download(name_or_path, allow_patterns=[CONFIG_FILE, *weights])


def load_checkpoint(
    name_or_path: str, dtype: Dtype = jnp.float32, vocab_size: int | None = None
) -> tuple[T5Config, dict[str, Any]]:
    """(config, params) of a Hugging Face T5 checkpoint; params are `dtype`, compute dtype too."""
    directory = resolve_checkpoint_dir(name_or_path)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"no {CONFIG_FILE} in {directory!r}: pass a Hugging Face T5 checkpoint directory")
    with open(config_path) as f:
        config = T5Config.from_hf_dict(json.load(f), dtype=dtype, param_dtype=dtype)
    params = params_from_state_dict(read_state_dict(directory), config, dtype, vocab_size)
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return config, params


def save_checkpoint(params: Mapping[str, Any], config: T5Config, directory: str) -> None:
    """Writes `config.json` and `model.safetensors` that Hugging Face `from_pretrained` loads."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
    tensors = {name: np.ascontiguousarray(array) for name, array in state_dict_from_params(params).items()}
    save_file(tensors, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
