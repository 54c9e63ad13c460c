"""Hugging Face BERT / RoBERTa checkpoints <-> Flax params.

Files are read by `models.checkpoint_files` (`config.json` plus safetensors or PyTorch weights,
sharded or not). A Hugging Face name maps to a Flax path by `layer.3` <-> `layer_3`, '.' <-> '/',
and the leaf `weight` <-> `kernel` (linear, transposed from torch [out, in] to Flax [in, out]),
`embedding` (embeddings) or `scale` (LayerNorm; old checkpoints call it `gamma` and the bias `beta`).

Checkpoints of `BertForMaskedLM`, `RobertaForSequenceClassification`, ... put the encoder under a
`bert.` / `roberta.` prefix; their heads (`cls.*`, `lm_head.*`, `classifier.*`, `qa_outputs.*`), the
pooler and the position/token-type id buffers are skipped. Everything else must match the config.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.models.bert.model import BertConfig, BertConfigError, Dtype, param_shapes
from s3delta_jax.models.checkpoint_files import (
    CONFIG_FILE,
    CheckpointError,
    StateDict,
    flax_layout,
    read_config,
    read_state_dict,
    resolve_checkpoint_dir,
    write_checkpoint,
)

HEAD_PREFIXES = ("cls.", "lm_head.", "classifier.", "qa_outputs.")
SKIPPED_PREFIXES = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")
_LEGACY_NORM_LEAVES = {"gamma": "weight", "beta": "bias"}
_HF_LAYER = re.compile(r"(?<![^.])layer\.(\d+)(?=\.)")
_FLAX_LAYER = re.compile(r"layer_(\d+)")


def flax_path(hf_name: str) -> tuple[str, ...]:
    """'encoder.layer.3.attention.self.query.weight' -> ('encoder', 'layer_3', 'attention', 'self', 'query', 'kernel').

    Legacy LayerNorm leaves map too: 'embeddings.LayerNorm.gamma' -> ('embeddings', 'LayerNorm', 'scale').
    """
    *module, leaf = _HF_LAYER.sub(r"layer_\1", hf_name).split(".")
    leaf = _LEGACY_NORM_LEAVES.get(leaf, leaf)
    if leaf == "weight":
        leaf = "scale" if module[-1] == "LayerNorm" else "embedding" if module[-1].endswith("_embeddings") else "kernel"
    return (*module, leaf)


def hf_name(flax_path: tuple[str, ...]) -> str:
    """('encoder', 'layer_3', 'output', 'LayerNorm', 'scale') -> 'encoder.layer.3.output.LayerNorm.weight'."""
    *module, leaf = flax_path
    module = [_FLAX_LAYER.sub(r"layer.\1", part) for part in module]
    return ".".join([*module, "bias" if leaf == "bias" else "weight"])


def _encoder_entries(state_dict: Mapping[str, np.ndarray], config: BertConfig) -> dict[str, np.ndarray]:
    """The encoder's entries without the `bert.` / `roberta.` prefix; heads, pooler and buffers dropped."""
    prefix = f"{config.model_type}."
    entries = {}
    for name, array in state_dict.items():
        if name.startswith(HEAD_PREFIXES):
            continue
        name = name.removeprefix(prefix)
        if not name.startswith(SKIPPED_PREFIXES):
            entries[name] = array
    return entries


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: BertConfig) -> dict[str, Any]:
    """Flax params (plain nested dict of `config.param_dtype` arrays) from a Hugging Face state dict.

    Strict: every encoder parameter must be present with its shape and every entry used, except
    the heads, pooler and buffers named in the module docstring.
    """
    expected = flax.traverse_util.flatten_dict(param_shapes(config))
    by_path = {flax_path(name): (name, array) for name, array in _encoder_entries(state_dict, config).items()}
    unexpected = sorted(name for path, (name, _) in by_path.items() if path not in expected)
    params = flax_layout(expected, by_path, unexpected, hf_name, config.model_type)
    params = {path: jnp.asarray(array, dtype=config.param_dtype) for path, array in params.items()}
    return flax.traverse_util.unflatten_dict(params)


def state_dict_from_params(params: Mapping[str, Any], config: BertConfig) -> StateDict:
    """Hugging Face `BertModel` / `RobertaModel` state dict (numpy, torch layout) of Flax params;
    the inverse of `params_from_state_dict`. The params must have the config's shapes."""
    expected = {path: shape.shape for path, shape in flax.traverse_util.flatten_dict(param_shapes(config)).items()}
    flat = flax.traverse_util.flatten_dict(params)
    actual = {path: np.shape(value) for path, value in flat.items()}
    wrong = sorted("/".join(p) for p in set(actual) | set(expected) if actual.get(p) != expected.get(p))
    if wrong:
        raise CheckpointError(f"params do not match the {config.model_type} config at {wrong[:4]} "
                              f"({len(wrong)} in all): pass the config the params were built with")
    state_dict = {}
    for path, value in flat.items():
        array = np.asarray(value)
        state_dict[hf_name(path)] = array.T if path[-1] == "kernel" else array
    return state_dict


def load_checkpoint(name_or_path: str, dtype: Dtype = jnp.float32) -> tuple[BertConfig, dict[str, Any]]:
    """(config, params) of a Hugging Face BERT / RoBERTa checkpoint directory (or hub id, online only);
    params and the compute dtype are `dtype`."""
    directory = resolve_checkpoint_dir(name_or_path)
    try:
        config = BertConfig.from_hf_dict(read_config(directory), dtype=dtype, param_dtype=dtype)
    except BertConfigError as error:
        raise BertConfigError(f"{os.path.join(directory, CONFIG_FILE)}: {error}") from None
    state_dict = read_state_dict(directory)  # its errors name the file
    try:
        return config, params_from_state_dict(state_dict, config)
    except CheckpointError as error:
        raise CheckpointError(f"{directory}: {error}") from None


def save_checkpoint(params: Mapping[str, Any], config: BertConfig, directory: str) -> None:
    """Writes `config.json` and `model.safetensors` that Hugging Face `from_pretrained` loads."""
    write_checkpoint(directory, config.to_hf_dict(), state_dict_from_params(params, config))


__all__ = [
    "CheckpointError",
    "flax_path",
    "hf_name",
    "load_checkpoint",
    "params_from_state_dict",
    "read_state_dict",
    "save_checkpoint",
    "state_dict_from_params",
]
