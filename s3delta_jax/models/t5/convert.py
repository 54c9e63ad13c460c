"""Hugging Face T5 checkpoints <-> Flax params.

Files are read by `models.checkpoint_files` (`config.json` plus safetensors or PyTorch weights,
sharded or not). A Hugging Face name maps to a Flax path by
`block.3` <-> `block_3`, `layer.1` <-> `layer_1`, '.' <-> '/', and the leaf `weight` <-> `kernel`
(linear, transposed from torch [out, in] to Flax [in, out]), `embedding` (embeddings) or `scale`
(layer norms).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.models.checkpoint_files import (
    CheckpointError,
    StateDict,
    flax_layout,
    read_config,
    read_state_dict,
    resolve_checkpoint_dir,
    write_checkpoint,
)
from s3delta_jax.models.t5.model import Dtype, T5Config, param_shapes

SHARED = "shared.weight"
LM_HEAD = "lm_head.weight"
# Copies of `shared` that Hugging Face ties, and a table that old checkpoints carry but never use.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
UNUSED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_INDEXED_NAME = re.compile(r"(block|layer)_(\d+)")


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
    paths = {hf_name(path): path for path in expected}
    by_path = {paths[name]: (name, array) for name, array in tensors.items() if name in paths}
    params = flax_layout(expected, by_path, sorted(set(tensors) - set(paths)), hf_name, "T5")
    vocab_rows = {("shared", "embedding"): np.s_[:vocab_size], ("lm_head", "kernel"): np.s_[:, :vocab_size]}
    params = {path: jnp.asarray(array[vocab_rows.get(path, ...)], dtype=dtype) for path, array in params.items()}
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


def load_checkpoint(
    name_or_path: str, dtype: Dtype = jnp.float32, vocab_size: int | None = None
) -> tuple[T5Config, dict[str, Any]]:
    """(config, params) of a Hugging Face T5 checkpoint; params are `dtype`, compute dtype too."""
    directory = resolve_checkpoint_dir(name_or_path)
    config = T5Config.from_hf_dict(read_config(directory), dtype=dtype, param_dtype=dtype)
    params = params_from_state_dict(read_state_dict(directory), config, dtype, vocab_size)
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return config, params


def save_checkpoint(params: Mapping[str, Any], config: T5Config, directory: str) -> None:
    """Writes `config.json` and `model.safetensors` that Hugging Face `from_pretrained` loads."""
    write_checkpoint(directory, config.to_hf_dict(), state_dict_from_params(params))
