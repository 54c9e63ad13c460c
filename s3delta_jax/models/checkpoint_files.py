"""Reading Hugging Face checkpoint directories, whatever the model family.

A directory holds `config.json` and its weights as `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`) or `pytorch_model.bin` (sharded or not; needs torch). A name that is
not a directory is a hub id, fetched only when the hub is reachable (see `hub.resolve_offline`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from s3delta_jax.errors import UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)

StateDict = dict[str, np.ndarray]
FlaxPath = tuple[str, ...]


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, malformed, or does not match the model's architecture."""


def read_config(directory: str) -> dict[str, Any]:
    """The `config.json` of a checkpoint directory as a dict."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"no {CONFIG_FILE} in {directory!r}: pass a Hugging Face checkpoint directory")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error}): restore the file from the checkpoint") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds {type(config).__name__}, not a JSON object: restore the file")
    return config


def weight_files(directory: str) -> list[str]:
    """The weight files the checkpoint in `directory` is read from (one, or every shard)."""
    path = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.isfile(path):
        return [path]
    for index_file in (SAFETENSORS_INDEX, TORCH_INDEX):
        index_path = os.path.join(directory, index_file)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise CheckpointError(f"{index_path} is not a readable shard index ({error!r}): "
                                      "restore the file from the checkpoint") from None
            return [os.path.join(directory, shard) for shard in shards]
    path = os.path.join(directory, TORCH_FILE)
    if os.path.isfile(path):
        return [path]
    raise CheckpointError(f"no weights in {directory!r}: expected one of {', '.join(WEIGHT_FILES)}")


def read_state_dict(directory: str) -> StateDict:
    """All tensors of the checkpoint in `directory` as numpy arrays, by Hugging Face name."""
    state_dict: StateDict = {}
    for path in weight_files(directory):
        state_dict.update(_read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path))
    return state_dict


def _read_safetensors(path: str) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing (named by the shard index): restore it from the checkpoint")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}): "
                              "the download or copy is probably incomplete; fetch it again") from None


def _read_torch(path: str) -> StateDict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint and torch is not installed: install torch or convert it to safetensors"
        ) from None
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing (named by the shard index): restore it from the checkpoint")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({str(error).splitlines()[0]}): "
                              "fetch it again or convert it to safetensors") from None
    # numpy has no bfloat16: widen those tensors (the loaders cast to the target dtype)
    return {
        name: (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        for name, tensor in state_dict.items()
    }


def flax_layout(expected: Mapping[FlaxPath, Any], by_path: Mapping[FlaxPath, tuple[str, np.ndarray]],
                unexpected: list[str], hf_name: Callable[[FlaxPath], str], family: str) -> dict[FlaxPath, np.ndarray]:
    """The flat Flax params of a checkpoint, checked strictly against the config's shapes.

    expected: {flax path: ShapeDtypeStruct} of the config; by_path: {flax path: (checkpoint name, array in
    torch layout)}; unexpected: checkpoint names that map to no expected path; hf_name names a missing
    path. Kernels are transposed from torch [out, in] to Flax [in, out]. Raises CheckpointError naming
    what is missing, unexpected or misshapen (`family` names the config, e.g. 'T5').
    """
    missing = [hf_name(path) for path in expected if path not in by_path]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the {family} config: missing {missing[:4]} ({len(missing)} in all), "
            f"unexpected {unexpected[:4]} ({len(unexpected)} in all); check config.json belongs to these weights"
        )
    params = {}
    for path, shape in expected.items():
        name, array = by_path[path]
        torch_shape = shape.shape[::-1] if path[-1] == "kernel" else shape.shape
        if array.shape != torch_shape:
            raise CheckpointError(f"{name} has shape {array.shape}, the config expects {torch_shape}: "
                                  "check config.json belongs to these weights")
        params[path] = array.T if path[-1] == "kernel" else array
    return params


def resolve_checkpoint_dir(name_or_path: str) -> str:
    """A local checkpoint directory, or the hub snapshot of a hub id (fails fast when offline)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise CheckpointError(f"{name_or_path!r} is a file: pass the checkpoint directory holding {CONFIG_FILE}")
    from s3delta_jax.hub import resolve_offline

    resolve_offline(name_or_path, what="model")
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(name_or_path)
    if any(f.endswith(".safetensors") for f in files):
        weights = ["*.safetensors", SAFETENSORS_INDEX]
    else:
        weights = ["pytorch_model*.bin", TORCH_INDEX]
    tokenizer_files = ["*.json", "*.txt", "*.model"]
    return snapshot_download(name_or_path, allow_patterns=[CONFIG_FILE, *weights, *tokenizer_files])


def write_checkpoint(directory: str, hf_config: dict[str, Any], state_dict: StateDict) -> None:
    """Writes `config.json` and `model.safetensors` (torch layout) that Hugging Face `from_pretrained` loads."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2)
    tensors = {name: np.ascontiguousarray(array) for name, array in state_dict.items()}
    save_file(tensors, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})


def files_fingerprint(directory: str) -> dict[str, int]:
    """{file name: size in bytes} of the config and weight files: what identifies loaded weights cheaply."""
    paths = [os.path.join(directory, CONFIG_FILE), *weight_files(directory)]
    return {os.path.basename(p): os.path.getsize(p) for p in paths if os.path.isfile(p)}
