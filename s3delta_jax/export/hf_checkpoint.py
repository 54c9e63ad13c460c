"""The Hugging Face side of the built-in model families: checkpoint files, tokenizer files, PyTorch classes.

  t5    `T5ForConditionalGeneration` (config.json, model.safetensors); the tokenizer is the
        SentencePiece file `spiece.model` (the byte tokenizer has no file)
  bert  `BertModel` / `RobertaModel` without the pooler; the tokenizer is the `transformers` one,
        saved with `save_pretrained`
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import numpy as np

from s3delta_jax.data.tokenizers import SPIECE_FILE
from s3delta_jax.export.refusal import ExportError
from s3delta_jax.models.backbone import Backbone, Params

FAMILIES = ("t5", "bert")
BYTE_TOKENIZERS = ("bytes", "byt5")


def check_family(backbone: Backbone) -> None:
    """Raises ExportError for a family whose Hugging Face format export does not know."""
    if backbone.family not in FAMILIES:
        raise ExportError(f"export writes the {' and '.join(FAMILIES)} families' Hugging Face formats, not "
                          f"{backbone.family!r}: merge your own model with s3delta_jax.deltas.merge_deltas")


def _convert(backbone: Backbone) -> Any:
    check_family(backbone)
    if backbone.family == "t5":
        from s3delta_jax.models.t5 import convert
    else:
        from s3delta_jax.models.bert import convert
    return convert


def state_dict(backbone: Backbone, params: Params) -> dict[str, np.ndarray]:
    """The Hugging Face state dict (torch layout, numpy) of the backbone's Flax `params`."""
    convert = _convert(backbone)
    if backbone.family == "t5":
        return convert.state_dict_from_params(params)
    return convert.state_dict_from_params(params, backbone.config)


def save_model(backbone: Backbone, params: Params, directory: str) -> None:
    """Writes config.json and model.safetensors of the backbone with `params` into `directory`."""
    _convert(backbone).save_checkpoint(params, backbone.config, directory)


def save_tokenizer(backbone: Backbone, directory: str) -> list[str]:
    """Writes the backbone's tokenizer files into `directory`; returns their names (none for the byte
    tokenizer or an encoder with random weights and no tokenizer)."""
    check_family(backbone)
    before = set(os.listdir(directory))
    if backbone.family == "bert":
        if backbone.tokenizer_dir:
            backbone.tokenizer.save_pretrained(directory)
    elif backbone.tokenizer_name not in BYTE_TOKENIZERS:
        shutil.copyfile(_spiece_file(backbone.tokenizer_name), os.path.join(directory, SPIECE_FILE))
    return sorted(set(os.listdir(directory)) - before)


def _spiece_file(name: str) -> str:
    """The SentencePiece file of a T5 tokenizer name: the file itself, a directory's, or a hub id's (cache)."""
    if os.path.isfile(name):
        return name
    if os.path.isdir(name):
        return os.path.join(name, SPIECE_FILE)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(name, SPIECE_FILE)


def auto_class(backbone: Backbone) -> Any:
    """The `transformers` auto class that loads the family's checkpoints."""
    import transformers

    check_family(backbone)
    return transformers.AutoModelForSeq2SeqLM if backbone.family == "t5" else transformers.AutoModel


def meta_torch_model(backbone: Backbone) -> Any:
    """The PyTorch model of the backbone's checkpoint directory on the meta device (shapes, no weights)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(backbone.checkpoint_dir)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto_class(backbone).from_config(config)
