"""A run's workdir: checked before anything is written, and bound to the run that started it.

The programs call, in this order and before writing anything into the workdir:

    workdir = prepare_workdir(FLAGS.workdir)
        # creates it; a one-line UserError when it is a file, lies under a file, or is not writable
    resuming = check_run_identity(workdir, config.to_dict(), backbone.fingerprint(),
                                  allowed=FLAGS.allow_config_change)
        # False: a new run (run.json written). True: this run already (finished or not): continue it
        # ("resuming from step N" when a checkpoint exists). A different config or backbone: UserError.

run.json records the run's identity: the config it was started with (`config`), the backbone's
fingerprint (`backbone`: a plain JSON dict the caller builds, e.g. family, parameter count, a checksum
of the shapes and of the weight files' names and sizes) and the accepted changes (`changes`). A re-run
whose config differs is refused with the changed fields (dotted paths, old -> new) unless every changed
field is both safe and allowed by `--allow_config_change` (comma-separated fields or patterns, or
'safe' for all of SAFE_FIELDS). Safe fields change how a run is executed, not what it computes: the
evaluation batch sizes, how often checkpoints are written, where a phase is cut short (`max_steps`:
the schedules decay over the uncut length, so a longer cut continues the same run), the device mesh and the process setup (a
run resumes on another mesh by design), and whether re-training follows the search. Every other field
(the budget, the space, a learning rate, the seed, ...) and the backbone can never change within a run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from s3delta_jax.errors import UserError
from s3delta_jax.train.outputs import write_json

RUN_FILE = "run.json"
SAFE = "safe"
# Fields added to the config after runs began to record run.json, each with the value that computes
# what runs recorded without it computed: such a run resumes when the field has that value.
ADDED_FIELDS = {"search.second_order_every": 1, "search.hessian_dropout": "independent",
                "search.scan_layers": False, "search.remat": "none", "search.data_split": "halves"}
SAFE_FIELDS = ("*.eval_batch_size", "*.checkpoint_every", "*.max_steps", "mesh.*", "distributed.*", "retrain_after_search")
# Fields that differ between the processes of one multi-host run, so they are not part of its identity.
PER_PROCESS_FIELDS = (("distributed", "process_id"),)
SHOWN_CHANGES = 3
_MISSING = "(absent)"


@dataclasses.dataclass(frozen=True)
class Change:
    """One field that differs between the recorded run and this one (`_MISSING` where absent)."""

    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field} {_short(self.old)} -> {_short(self.new)}"


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What makes a run the same run: its config and its backbone's fingerprint (JSON values)."""

    config: dict[str, Any]
    backbone: dict[str, Any]

    def changes_to(self, other: RunIdentity) -> list[Change]:
        """The fields of `other` that differ from this identity's; backbone fields as `backbone.<key>`."""
        return _changes(_flat(self.config), _flat(other.config), ADDED_FIELDS) + _changes(
            _flat(self.backbone, "backbone."), _flat(other.backbone, "backbone."))


def prepare_workdir(path: str) -> str:
    """Creates the workdir (and its parents) and returns its absolute path; a one-line UserError naming
    the path when it is a file, lies under a file, or cannot be written."""
    workdir = os.path.abspath(path)
    if os.path.isfile(workdir):
        raise UserError(f"--workdir {workdir} is a file: pass a directory (it is created if missing)")
    blocking = _file_above(workdir)
    if blocking is not None:
        raise UserError(f"--workdir {workdir} lies under {blocking}, which is a file: choose a path in a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise UserError(f"--workdir {workdir} is not writable ({error.strerror}): choose a directory you can "
                        "write to, or fix its permissions") from None
    return workdir


def _file_above(path: str) -> str | None:
    """The nearest existing ancestor of `path` if it is not a directory."""
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent if parent and not os.path.isdir(parent) else None


def check_run_identity(workdir: str, config: Mapping[str, Any], fingerprint: Mapping[str, Any],
                       allowed: Sequence[str] = (), write: bool = True) -> bool:
    """Whether `workdir` already holds this run (see the module docstring); writes run.json for a new
    run or an accepted change when `write` (the one process that writes outputs). Writes nothing when
    it raises."""
    new = RunIdentity(_without_per_process_fields(_as_json(config)), _as_json(fingerprint))
    _check_allowed_names(allowed, new.config)
    recorded = read_run_identity(workdir)
    if recorded is None:
        if os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise UserError(f"{workdir} holds checkpoints but no {RUN_FILE}, so it cannot tell which config made "
                            "them: use a new --workdir")
        if write:
            _write(workdir, new, [])
        return False
    identity, history = recorded
    changes = identity.changes_to(new)
    refused = [change for change in changes if not may_change(change.field, allowed)]
    if refused:
        raise UserError(_refusal(workdir, refused))
    if changes and write:
        _write(workdir, new, history + [{c.field: [c.old, c.new] for c in changes}])
    return True


def is_safe(field: str) -> bool:
    """Whether changing `field` leaves what the run computes unchanged (SAFE_FIELDS)."""
    return any(fnmatch.fnmatchcase(field, pattern) for pattern in SAFE_FIELDS)


def may_change(field: str, allowed: Sequence[str]) -> bool:
    """Whether `field` may differ from the recorded run: it is safe, and allowed by name or by 'safe'."""
    return is_safe(field) and any(name == SAFE or fnmatch.fnmatchcase(field, name) for name in allowed)


def read_run_identity(workdir: str) -> tuple[RunIdentity, list[dict]] | None:
    """(the recorded identity, its accepted changes), or None when the workdir has no run.json."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        return RunIdentity(record["config"], record["backbone"]), list(record.get("changes", []))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}): restore it, or use a new --workdir") from None


def _write(workdir: str, identity: RunIdentity, changes: list[dict]) -> None:
    write_json(os.path.join(workdir, RUN_FILE),
               {"config": identity.config, "backbone": identity.backbone, "changes": changes})


def _check_allowed_names(allowed: Sequence[str], config: dict[str, Any]) -> None:
    fields = list(_flat(config))
    for name in allowed:
        if name != SAFE and not any(fnmatch.fnmatchcase(field, name) for field in fields):
            raise UserError(f"--allow_config_change={name}: no config field matches it: name dotted fields "
                            f"(e.g. search.eval_batch_size) or '{SAFE}'")


def _refusal(workdir: str, refused: list[Change]) -> str:
    """One line: the changed fields (unsafe ones first, at most SHOWN_CHANGES) and the choices."""
    unsafe = [c for c in refused if not is_safe(c.field)]
    ordered = unsafe + [c for c in refused if c not in unsafe]
    shown = ", ".join(map(str, ordered[:SHOWN_CHANGES]))
    more = f" (and {len(ordered) - SHOWN_CHANGES} more)" if len(ordered) > SHOWN_CHANGES else ""
    start = f"--workdir {workdir} holds a run started with another config or backbone: {shown}{more}"
    if unsafe:
        return (f"{start}: these change what the run computes, so they cannot change within a run: use a new "
                f"--workdir (only {', '.join(SAFE_FIELDS)} may change, with --allow_config_change)")
    names = ",".join(c.field for c in ordered)
    return f"{start}: use a new --workdir, or continue this run with --allow_config_change={names} (or ={SAFE})"


def _changes(old: dict[str, Any], new: dict[str, Any], added: Mapping[str, Any] = {}) -> list[Change]:
    """The fields whose values differ; a field absent from `old` reads as its `added` value, if any."""
    fields = list(old) + [field for field in new if field not in old]
    before = {field: old.get(field, added.get(field, _MISSING)) for field in fields}
    return [Change(field, before[field], new.get(field, _MISSING))
            for field in fields if before[field] != new.get(field, _MISSING)]


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted path: leaf} of nested dicts; an empty dict is a leaf."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_json(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`tree` as it reads back from JSON (tuples become lists), so recorded and new values compare."""
    return json.loads(json.dumps(tree))


def _without_per_process_fields(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without PER_PROCESS_FIELDS: every process of a run checks and records the same identity."""
    for section, field in PER_PROCESS_FIELDS:
        config.get(section, {}).pop(field, None)
    return config


def _short(value: Any, limit: int = 40) -> str:
    text = value if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
