"""The Hugging Face side of an export: which backbones have a format, their tokenizer files, and the
PyTorch model of a checkpoint directory. What a family writes is its own (`Backbone.hf_state_dict`,
`save_hf_checkpoint`, `save_tokenizer`, `hf_auto_class`)."""

from __future__ import annotations

import os
import warnings
from typing import Any

from s3delta_jax.export.refusal import ExportError
from s3delta_jax.models.backbone import Backbone


def check_family(backbone: Backbone) -> None:
    """Raises ExportError for a family without a Hugging Face format."""
    if backbone.hf_auto_class is None:
        raise ExportError(f"the {backbone.family!r} family has no Hugging Face format to export to: merge your "
                          "own model with s3delta_jax.deltas.merge_deltas")


def save_tokenizer(backbone: Backbone, directory: str) -> list[str]:
    """Writes the backbone's tokenizer files into `directory`; returns their names."""
    check_family(backbone)
    before = set(os.listdir(directory))
    backbone.save_tokenizer(directory)
    return sorted(set(os.listdir(directory)) - before)


def auto_class(backbone: Backbone) -> Any:
    """The `transformers` auto class that loads the family's checkpoints."""
    import transformers

    check_family(backbone)
    return getattr(transformers, backbone.hf_auto_class)


def meta_torch_model(backbone: Backbone) -> Any:
    """The PyTorch model of the backbone's checkpoint directory on the meta device (shapes, no weights)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(backbone.checkpoint_dir)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto_class(backbone).from_config(config)
