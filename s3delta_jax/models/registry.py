"""Model families by name, and which family a config's model belongs to.

    backbone = load_backbone(config.model)     # a `Backbone` of the right family

A family is a `Backbone` subclass with `from_config(model_config)`, its `presets` (names with random
weights or known checkpoints) and the Hugging Face `model_types` it reads. The built-in families
are imported only when asked for, so importing this module loads no model code. Register your own
with `register_family("mine", MyBackbone)` (or a "module:Class" path) and select it with
`--config.model.family=mine`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import ml_collections

from s3delta_jax.errors import UserError
from s3delta_jax.models import checkpoint_files
from s3delta_jax.models.backbone import Backbone

_FAMILIES: dict[str, Any] = {
    "t5": "s3delta_jax.models.t5.backbone:T5Backbone",
    "bert": "s3delta_jax.models.bert.backbone:BertBackbone",
}


class FamilyError(UserError, ValueError):
    """A model that no registered family reads, or an unknown family name."""


def register_family(name: str, backbone_class: type[Backbone] | str) -> None:
    """Adds (or replaces) a family: a Backbone subclass, or its "module:Class" import path."""
    _FAMILIES[name] = backbone_class


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def family_class(name: str) -> type[Backbone]:
    """The Backbone subclass of family `name` (imported on first use)."""
    if name not in _FAMILIES:
        raise FamilyError(f"unknown model family {name!r}: use one of {', '.join(_FAMILIES)} "
                          "(or register your own with s3delta_jax.models.registry.register_family)")
    entry = _FAMILIES[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _FAMILIES[name] = getattr(importlib.import_module(module), attribute)
    return entry


def detect_family(name: str, random_init: bool) -> str:
    """The family of a model name: a family's preset, else the `model_type` of its config.json
    (a local directory, or a hub id's, which needs the hub)."""
    for family in _FAMILIES:
        if name in family_class(family).presets:
            return family
    if random_init:
        presets = ", ".join(p for f in _FAMILIES for p in family_class(f).presets)
        raise FamilyError(f"model.random_init needs a preset name, got {name!r}: use one of {presets}")
    directory = checkpoint_files.resolve_checkpoint_dir(name)
    model_type = checkpoint_files.read_config(directory).get("model_type")
    for family in _FAMILIES:
        if model_type in family_class(family).model_types:
            return family
    raise FamilyError(f"{os.path.join(directory, checkpoint_files.CONFIG_FILE)}: model_type {model_type!r} is "
                      f"read by no model family ({', '.join(_FAMILIES)}); pass --config.model.family= for your own")


def load_backbone(model_config: ml_collections.ConfigDict) -> Backbone:
    """The Backbone of the config's `model` section (its family from `model.family`, or detected)."""
    family = model_config.family or detect_family(model_config.name, model_config.random_init)
    return family_class(family).from_config(model_config)
