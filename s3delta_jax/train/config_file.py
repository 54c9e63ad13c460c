"""Config files as the programs take them: `--config=FILE[:VARIANT]` and `--config.a.b=VALUE` overrides.

A config file is a Python file with `get_config(arg=None)` returning an `ml_collections.ConfigDict`;
the text after the first ':' is passed as `arg` (`configs/mrpc.py:smoke`). An override sets one field,
parsed by the type of its current value:
  bool       --config.a.b=true|false|1|0|yes|no, a bare --config.a.b (true), or --noconfig.a.b (false)
  int, float Python number syntax (1e-4, 1_000)
  str        the text as it is (--config.a.b= gives "")
  tuple      a Python literal: --config.mesh.rules="(('mlp', None),)"
  dict       a Python dict literal; a free-form dict (ConfigDict with type_safe=False, e.g.
             model.config_overrides) also takes new keys one by one: --config.model.config_overrides.d_model=64
A value may also follow as the next argument (--config.seed 3). Every problem (missing file, syntax
error, unknown variant, unknown field, wrong type) is a one-line ConfigError that names the file or
field and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from s3delta_jax.errors import UserError

_OVERRIDE = re.compile(r"^--?(no)?config\.([A-Za-z_][\w.]*)(=(.*))?$", re.S)
_FLAG = re.compile(r"^--?[A-Za-z_]")  # a flag, unlike a negative number such as -3
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigError(UserError):
    """A config file that cannot be loaded, or an override or field value that does not fit."""


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--config.FIELD[=TEXT]` argument: `text` is None for a bare flag; `negated` for --noconfig.FIELD."""

    field: str
    text: str | None
    negated: bool = False

    def __str__(self) -> str:
        flag = f"--{'no' if self.negated else ''}config.{self.field}"
        return flag if self.text is None else f"{flag}={self.text}"


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[Override]]:
    """(argv without the overrides, the overrides in order). An override without '=' takes the next
    argument as its value unless that is a flag (then it is a bare boolean flag; -3 is a value);
    arguments after a bare '--' are left alone."""
    rest, overrides = [], []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest += argv[index:]
            break
        match = _OVERRIDE.match(arg)
        if match is None:
            rest.append(arg)
        else:
            negated, field, text = bool(match.group(1)), match.group(2), match.group(4)
            follows = argv[index + 1] if index + 1 < len(argv) else None
            if text is None and not negated and follows is not None and not _FLAG.match(follows):
                text, index = follows, index + 1
            overrides.append(Override(field, text, negated))
        index += 1
    return rest, overrides


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the file in `spec` ("FILE" or "FILE:ARG"), or a one-line ConfigError."""
    path, _, arg = spec.partition(":")
    if not path:
        raise ConfigError("--config is empty: pass a config file, e.g. --config=configs/mrpc.py:smoke")
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise ConfigError(f"config file {path} {problem}: pass a Python config file, e.g. "
                          "--config=configs/mrpc.py (or configs/mrpc.py:smoke for a variant)")
    module = _load_module(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} has no get_config(): define get_config(arg=None) returning a ConfigDict")
    try:
        config = get_config(arg) if arg else get_config()
    except (ValueError, KeyError, TypeError) as error:  # the configs report unknown variants this way
        raise ConfigError(f"--config={spec}: {one_line(error)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of {path} returned {type(config).__name__}, not an ml_collections.ConfigDict")
    return config


def _load_module(path: str):
    """The config file as a module; a syntax error is a ConfigError at its line."""
    name = "s3delta_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"{error.filename or path}:{error.lineno}: syntax error in the config file "
                          f"({error.msg}): fix that line") from None
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[Override], spec: str) -> None:
    """Sets each override's field in `config` (in order); `spec` names the config in errors."""
    for override in overrides:
        parent, name = _parent_of(config, override.field, spec)
        if name in parent:
            value = parse_value(override, parent[name])
        elif not parent.is_type_safe:  # a free-form dict takes new keys
            value = _literal_or_text(_required_text(override))
        else:
            raise ConfigError(_unknown_field_message(config, override.field, spec))
        try:
            parent[name] = value
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{override}: {one_line(error)}") from None


def _parent_of(config: ml_collections.ConfigDict, field: str, spec: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the ConfigDict that holds `field`, the field's last name)."""
    *parents, name = field.split(".")
    node = config
    for depth, part in enumerate(parents):
        child = node[part] if part in node else None
        if not isinstance(child, ml_collections.ConfigDict):
            if child is None:
                raise ConfigError(_unknown_field_message(config, field, spec))
            raise ConfigError(f"--config.{field}: {'.'.join(parents[:depth + 1])} is a value, not a group of fields")
        node = child
    return node, name


def _unknown_field_message(config: ml_collections.ConfigDict, field: str, spec: str) -> str:
    known = list(leaf_fields(config))
    close = difflib.get_close_matches(field, known, n=2, cutoff=0.8)
    hint = f"did you mean {' or '.join(close)}?" if close else "see --help for every field"
    return f"--config.{field}: no such field in {spec}: {hint}"


def parse_value(override: Override, current: Any) -> Any:
    """The override's text as a value of the type of `current` (see the module docstring)."""
    if isinstance(current, bool):
        return _parse_bool(override)
    if override.negated:
        raise ConfigError(f"{override}: --noconfig. works for boolean fields only; this one holds {current!r}")
    text = _required_text(override)
    if isinstance(current, int):
        return _parse_number(override, text, int, "an integer, e.g. 3")
    if isinstance(current, float):
        return _parse_number(override, text, float, "a number, e.g. 0.001 or 1e-4")
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        value = _literal(override, text, "a tuple, e.g. \"(('mlp', None),)\"")
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{override}: expected a tuple, e.g. \"(('mlp', None),)\"")
        return tuple(value)
    if isinstance(current, ml_collections.ConfigDict):
        value = _literal(override, text, "a dict, e.g. \"{'d_model': 64}\"")
        if not isinstance(value, dict):
            raise ConfigError(f"{override}: expected a dict, e.g. \"{{'d_model': 64}}\"")
        return ml_collections.ConfigDict(value, type_safe=current.is_type_safe)
    return _literal_or_text(text)


def _required_text(override: Override) -> str:
    if override.text is None:
        raise ConfigError(f"{override} needs a value: write --config.{override.field}=VALUE")
    return override.text


def _parse_bool(override: Override) -> bool:
    if override.text is None:
        return not override.negated
    word = override.text.strip().lower()
    if override.negated or word not in _TRUE + _FALSE:
        raise ConfigError(f"{override}: expected true or false (or --config.{override.field} / "
                          f"--noconfig.{override.field})")
    return word in _TRUE


def _parse_number(override: Override, text: str, kind: type, example: str) -> int | float:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ConfigError(f"{override}: expected {example}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{override}: expected a finite number, e.g. 0.001")
    return value


def _literal(override: Override, text: str, expected: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConfigError(f"{override}: expected {expected} (a Python literal; quote it for the shell)") from None


def _literal_or_text(text: str) -> Any:
    """A Python literal if the text is one (64, 1e-3, True, (1, 2)), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{dotted field: value} of every leaf; a free-form dict (type_safe=False) counts as one leaf."""
    return dict(_leaves(config, prefix))


def _leaves(config: ml_collections.ConfigDict, prefix: str) -> Iterator[tuple[str, Any]]:
    for name, value in config.items():
        field = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict) and value.is_type_safe:
            yield from _leaves(value, f"{field}.")
        else:
            yield field, value


def one_line(error: BaseException) -> str:
    """An exception's message on one line (KeyError's repr quotes removed), or its type's name."""
    text = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    text = " ".join(str(text).split())
    return text or type(error).__name__
