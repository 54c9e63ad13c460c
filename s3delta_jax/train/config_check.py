"""`validate_config(config)`: every field of configs/base.py checked before any heavy work.

Types, ranges and choice sets, one rule per field in FIELD_RULES; the choices come from the code that
consumes each field (search/hypergrad.py, step.py, gates.py, select.py, data/registry.py, glue.py,
models/registry.py, models/dtypes.py, train/sharding.py), and the search settings are also checked
together by `SearchSettings` itself (e.g. delta_gradient='reuse' needs a second-order estimator).
Choices that depend on the backbone's family are left to it, which reports them when the model is
known: `search.space` (the family's space presets), `eval.method` (its task heads' methods) and
`model.pooling` (encoders). A field without a rule (one a task config adds) is left to its consumer.
Every problem is a one-line ConfigError naming the field and the valid values.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from s3delta_jax.train.config_file import ConfigError, leaf_fields

Rule = Callable[[str, Any], None]
PHASES = ("search", "retrain")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ConfigError for the first field of `config` that no consumer could take."""
    for field, value in leaf_fields(config).items():
        if field in FIELD_RULES:
            FIELD_RULES[field](field, value)
    _check_mesh_sizes(config)
    _check_search_settings(config)


def integer(minimum: int | None = None, maximum: int | None = None, also: tuple[int, ...] = ()) -> Rule:
    """An int (not a bool) in [minimum, maximum], or one of `also` (e.g. -1 for 'the rest')."""

    def check(field: str, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and (
                value in also or ((minimum is None or value >= minimum) and (maximum is None or value <= maximum))):
            return
        bounds = [f">= {minimum}"] * (minimum is not None) + [f"<= {maximum}"] * (maximum is not None)
        extra = "".join(f" or {v}" for v in also)
        _fail(field, value, f"an integer{' ' + ' and '.join(bounds) if bounds else ''}{extra}")

    return check


def number(positive: bool = False, minimum: float | None = None, below: float | None = None) -> Rule:
    """A finite int or float: > 0 with `positive`, >= minimum, < below."""

    def check(field: str, value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and not (positive and value <= 0) and not (minimum is not None and value < minimum)
        if ok and not (below is not None and value >= below):
            return
        bounds = ["> 0"] * positive + [f">= {minimum}"] * (minimum is not None) + [f"< {below}"] * (below is not None)
        _fail(field, value, f"a finite number{' ' + ' and '.join(bounds) if bounds else ''}")

    return check


def boolean(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(field, value, "true or false")


def text(nonempty: bool = False) -> Rule:
    """A string (with `nonempty`, one that is not blank)."""

    def check(field: str, value: Any) -> None:
        if not isinstance(value, str) or (nonempty and not value.strip()):
            _fail(field, value, "a non-empty string" if nonempty else "a string")

    return check


def choice(*sources: str, extra: tuple[str, ...] = ()) -> Rule:
    """One of `extra` or of the values named by `sources`: "module:attribute", a tuple, a dict (its
    keys) or a function returning one; imported when checked, so the consumers load only then."""

    def check(field: str, value: Any) -> None:
        valid = list(extra)
        for source in sources:
            module, _, attribute = source.partition(":")
            values = getattr(importlib.import_module(module), attribute)
            valid += list(values() if callable(values) else values)
        if value not in valid:
            _fail(field, value, f"one of {', '.join(map(repr, valid))}")

    return check


def budget(field: str, value: Any) -> None:
    """search.budget: a ratio in (0, 1) of the backbone, or a whole parameter count >= 1."""
    number(positive=True)(field, value)
    if value >= 1 and float(value) != int(value):
        _fail(field, value, "a ratio in (0, 1) or a whole parameter count >= 1")


def directory_or_empty(field: str, value: Any) -> None:
    text()(field, value)
    if value and not os.path.isdir(value):
        problem = "is a file" if os.path.exists(value) else "does not exist"
        _fail(field, value, f"'' or an existing directory ({value} {problem})")


def string_mapping(field: str, value: Any) -> None:
    """A dict of name -> int, float, bool or str (model config fields)."""
    items = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    if not isinstance(items, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, bool, str)) for k, v in items.items()):
        _fail(field, value, "a dict of field names to numbers, booleans or strings, e.g. \"{'d_model': 64}\"")


def reference_fixes(field: str, value: Any) -> None:
    """data.fix_reference_bugs: a bool, or names (one, or a tuple) of data/glue.py's FIXES."""
    from s3delta_jax.data.glue import FIXES

    names = (value,) if isinstance(value, str) else value
    if isinstance(value, bool) or (isinstance(names, (tuple, list)) and set(names) <= set(FIXES)):
        return
    _fail(field, value, f"true, false, or names among {', '.join(sorted(FIXES))}")


def mesh_rules(field: str, value: Any) -> None:
    from s3delta_jax.train.sharding import logical_rules

    logical_rules(tuple(value) if isinstance(value, (tuple, list)) else (value,))


def _schedule_rules(phase: str) -> dict[str, Rule]:
    """The loop settings of one phase (configs/base.py `schedule`)."""
    return {
        f"{phase}.batch_size": integer(minimum=1),
        f"{phase}.epochs": integer(minimum=1),
        f"{phase}.eval_every": integer(minimum=1),
        f"{phase}.eval_batch_size": integer(minimum=1),
        f"{phase}.learning_rate": number(positive=True),
        f"{phase}.clip_norm": number(positive=True),
        f"{phase}.group_batches": integer(minimum=0),
        f"{phase}.max_steps": integer(),  # <= 0: no cut
        f"{phase}.checkpoint_every": integer(),  # <= 0: at every evaluation
    }


FIELD_RULES: dict[str, Rule] = {
    "seed": integer(minimum=0, maximum=2**31 - 1),
    "model.name": text(nonempty=True),
    "model.family": choice("s3delta_jax.models.registry:family_names", extra=("",)),
    "model.random_init": boolean,
    "model.config_overrides": string_mapping,
    "model.tokenizer": text(),
    "model.vocab_size": integer(minimum=0),
    "model.dtype": choice("s3delta_jax.models.dtypes:DTYPES"),
    "model.dropout_rate": number(minimum=0.0, below=1.0),
    "model.pooling": text(nonempty=True),
    "data.task": choice("s3delta_jax.data.registry:task_names", "s3delta_jax.data.registry:ALIASES"),
    "data.path": directory_or_empty,
    "data.fix_reference_bugs": reference_fixes,
    "data.max_source_length": integer(minimum=0),
    "data.pad_multiple": integer(minimum=0),
    "search.space": text(nonempty=True),
    "search.budget": budget,
    "search.estimator": choice("s3delta_jax.search.hypergrad:ESTIMATORS"),
    "search.fd_dropout": choice("s3delta_jax.search.hypergrad:FD_DROPOUT"),
    "search.hessian_dropout": choice("s3delta_jax.search.hypergrad:HESSIAN_DROPOUT"),
    "search.delta_gradient": choice("s3delta_jax.search.step:DELTA_GRADIENTS"),
    "search.second_order_every": integer(minimum=1),
    "search.virtual_step": choice("s3delta_jax.search.hypergrad:VIRTUAL_STEPS"),
    "search.tau": number(positive=True),
    "search.gate_mode": choice("s3delta_jax.search.gates:GATE_MODES"),
    "search.l0_weight": number(minimum=0.0),
    "search.alpha_learning_rate": number(positive=True),
    "search.data_split": choice("s3delta_jax.data.splits:SEARCH_DATA_SPLITS"),
    "search.selection": choice("s3delta_jax.search.select:STRATEGIES"),
    "search.scan_layers": boolean,
    "search.remat": choice("s3delta_jax.models.remat:REMAT_POLICIES"),  # T5 takes all; other families "none" only
    **{field: rule for phase in PHASES for field, rule in _schedule_rules(phase).items()},
    "eval.method": text(nonempty=True),
    "eval.max_decode_length": integer(minimum=1),
    **{f"mesh.{axis}": integer(minimum=1, also=(-1,)) for axis in ("data", "fsdp", "model")},  # -1: the rest
    "mesh.rules": mesh_rules,
    "distributed.initialize": boolean,
    "distributed.coordinator_address": text(),
    "distributed.num_processes": integer(minimum=0),
    "distributed.process_id": integer(minimum=-1),
    "retrain_after_search": boolean,
}


def _check_search_settings(config: ml_collections.ConfigDict) -> None:
    """The search settings together, as `SearchSettings` (search/step.py) checks them."""
    from s3delta_jax.search.step import SearchSettings

    if "search" not in config:
        return
    names = [f.name for f in dataclasses.fields(SearchSettings) if f.name in config.search]
    try:
        SearchSettings(**{name: config.search[name] for name in names})
    except ValueError as error:
        raise ConfigError(f"config section search: {' '.join(str(error).split())}") from None


def _check_mesh_sizes(config: ml_collections.ConfigDict) -> None:
    """The mesh sizes together (at most one -1), as `mesh_shape` (train/sharding.py) checks them on a
    device count they fit; whether they fit the devices at hand is known only at the start of the run."""
    from s3delta_jax.train.sharding import MESH_AXES, mesh_shape

    if "mesh" in config:
        mesh_shape(config.mesh, math.prod(config.mesh[axis] for axis in MESH_AXES if config.mesh[axis] > 0))


def _fail(field: str, value: Any, expected: str) -> None:
    shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    raise ConfigError(f"config field {field}={shown!r}: expected {expected} (set it with --config.{field}=VALUE)")
