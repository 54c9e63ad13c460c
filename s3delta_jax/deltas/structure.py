"""Structure files: the chosen deltas, the hand-off from search to re-training (design section 2).

Our format (``schema_version`` 1), one JSON object::

    {"schema_version": 1,
     "backbone": {"name": "t5-large", "params": 737639424, "fingerprint": {"family": "t5", ...}},
     "budget": {"value": 0.0001389, "params": 102458},
     "search_space": "s3pet_mix",
     "total_size": 101936,
     "chosen": [{"path": "encoder/block_4/layer_0/SelfAttention/q", "delta_type": "lora",
                 "key": "lora", "kwargs": {"r": 1, "alpha": 16.0}, "size": 2048, "pass": 0}, ...],
     "candidates": [{"index": 0, "path": ..., "delta_type": ..., "key": ..., "size": ...,
                     "alpha": 0.31, "p": 0.057, "chosen": false}, ...]}

``chosen`` may be empty: a linear probe, where only the task head trains (re-training refuses it
where the task has no head). ``candidates`` (every candidate of the search with its alpha and p) may
be empty; ``budget``, ``backbone`` and ``search_space`` fields may be null for hand-made structures.
``backbone.fingerprint`` (family, parameter count, a checksum of the shapes, the weight files' names
and sizes: see `models.backbone.Backbone.fingerprint`) names the backbone the structure was searched
on; re-training refuses another one.

The reference implementation's format (reference section 5) is a JSON list with one dict per pass
mapping a Hugging Face dotted module name to {"parallel"|"sequential": {DeltaType: kwargs}}, e.g.
``{"decoder.block.20.layer.1.layer_norm": {"sequential": {"BitFitParallel": {}}}}``;
:func:`load_reference_structure` / :func:`save_reference_structure` convert it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s3delta_jax.deltas.budget import BudgetError, budget_params
from s3delta_jax.deltas.modules import DeltaTypeError, get_delta_type, delta_type_for_reference
from s3delta_jax.deltas.positions import Position, hf_module_name, position_table
from s3delta_jax.deltas.spaces import Candidate, make_candidate
from s3delta_jax.errors import UserError

SCHEMA_VERSION = 1


class StructureError(UserError, ValueError):
    """A structure file that is malformed or does not fit the backbone; one line naming file and problem."""


@dataclasses.dataclass(frozen=True)
class StructureEntry:
    """One chosen delta: ``delta_type(**kwargs)`` at the position named ``path``."""

    path: str
    delta_type: str
    kwargs: Mapping[str, Any]
    size: int
    key: str
    pass_index: int = 0


@dataclasses.dataclass
class Structure:
    """A chosen sparse structure and where it came from.

    ``candidates`` records every candidate of the search: dicts with index, path, delta_type,
    key, size, alpha, p and chosen.
    """

    chosen: list[StructureEntry]
    backbone: str | None = None
    backbone_params: int | None = None
    budget: float | int | None = None
    budget_params: int | None = None
    search_space: str | None = None
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source: str = "<structure>"
    backbone_fingerprint: dict[str, Any] | None = None

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.chosen)

    def candidates_for(self, positions: Sequence[Position]) -> list[Candidate]:
        """The chosen deltas as candidates (indices 0..k-1) on a backbone's positions, for re-training."""
        table = position_table(positions)
        candidates = []
        for i, entry in enumerate(self.chosen):
            where = f"{self.source}: chosen[{i}] {entry.delta_type} at {entry.path}"
            if entry.path not in table:
                raise StructureError(f"{where}: no such position in the given backbone")
            try:
                candidate = make_candidate(i, table[entry.path], entry.delta_type, entry.kwargs, entry.key, entry.pass_index)
            except DeltaTypeError as error:
                raise StructureError(f"{where}: {error}") from None
            if candidate.size != entry.size:
                raise StructureError(f"{where}: size {entry.size} in the file but {candidate.size} on the given backbone")
            candidates.append(candidate)
        return candidates


def structure_from_candidates(
    chosen: Sequence[Candidate],
    *,
    backbone: str | None = None,
    backbone_params: int | None = None,
    backbone_fingerprint: Mapping[str, Any] | None = None,
    budget: float | int | None = None,
    budget_params: int | None = None,
    search_space: str | None = None,
    all_candidates: Sequence[Candidate] = (),
    alpha: Sequence[float] | None = None,
    p: Sequence[float] | None = None,
) -> Structure:
    """A Structure of ``chosen``; ``alpha`` and ``p`` (length N, by candidate.index) annotate ``all_candidates``."""
    chosen_names = {c.name for c in chosen}
    for name, values in (("alpha", alpha), ("p", p)):
        if values is not None and len(values) != len(all_candidates):
            raise StructureError(f"{name} has {len(values)} values for {len(all_candidates)} candidates")
    records = [
        {
            "index": c.index,
            "path": c.position.name,
            "delta_type": c.delta_type,
            "key": c.key,
            "size": c.size,
            "alpha": None if alpha is None else float(alpha[c.index]),
            "p": None if p is None else float(p[c.index]),
            "chosen": c.name in chosen_names,
        }
        for c in all_candidates
    ]
    entries = [
        StructureEntry(c.position.name, c.delta_type, dict(c.kwargs), c.size, c.key, c.pass_index)
        for c in sorted(chosen, key=lambda c: c.index)
    ]
    structure = Structure(entries, backbone, backbone_params, budget, budget_params, search_space, records,
                          backbone_fingerprint=None if backbone_fingerprint is None else dict(backbone_fingerprint))
    check_budget(structure)
    return structure


def structure_to_json(structure: Structure) -> dict[str, Any]:
    """The JSON object of a structure (schema version 1)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "backbone": {"name": structure.backbone, "params": structure.backbone_params,
                     **({} if structure.backbone_fingerprint is None else {"fingerprint": structure.backbone_fingerprint})},
        "budget": {"value": structure.budget, "params": structure.budget_params},
        "search_space": structure.search_space,
        "total_size": structure.total_size,
        "chosen": [
            {"path": e.path, "delta_type": e.delta_type, "key": e.key, "kwargs": dict(e.kwargs), "size": e.size, "pass": e.pass_index}
            for e in structure.chosen
        ],
        "candidates": list(structure.candidates),
    }


def save_structure(path: str | Path, structure: Structure) -> None:
    """Writes ``structure`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(structure_to_json(structure), indent=1) + "\n")


class _Reader:
    """Typed field access that raises one-line StructureErrors naming the file and the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, message: str) -> StructureError:
        return StructureError(f"{self.source}: {message}")

    def get(self, obj: Any, key: str, types: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(f"{where or 'top level'} must be a JSON object")
        label = f"{where}.{key}" if where else key
        if key not in obj:
            if optional:
                return None
            raise self.fail(f"missing field '{label}'")
        value = obj[key]
        if value is None and optional:
            return None
        is_number = types in (float, (int, float))
        if isinstance(value, bool) and types is not bool or not isinstance(value, types) or (is_number and not math.isfinite(value)):
            names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise self.fail(f"field '{label}' must be {names}, got {value!r}")
        return value


def structure_from_json(data: Any, positions: Sequence[Position] | None = None, source: str = "<structure>") -> Structure:
    """Validates a parsed structure JSON object (against ``positions`` if given) and returns it."""
    r = _Reader(source)
    version = r.get(data, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise r.fail(f"schema_version {version} is not supported (expected {SCHEMA_VERSION})")
    backbone = r.get(data, "backbone", dict, "")
    budget = r.get(data, "budget", dict, "")
    structure = Structure(
        chosen=[],
        backbone=r.get(backbone, "name", str, "backbone", optional=True),
        backbone_params=r.get(backbone, "params", int, "backbone", optional=True),
        budget=r.get(budget, "value", (int, float), "budget", optional=True),
        budget_params=r.get(budget, "params", int, "budget", optional=True),
        search_space=r.get(data, "search_space", str, "", optional=True),
        source=source,
        backbone_fingerprint=r.get(backbone, "fingerprint", dict, "backbone", optional=True),
    )
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(r.get(data, "chosen", list, "")):
        where = f"chosen[{i}]"
        entry = StructureEntry(
            path=r.get(item, "path", str, where),
            delta_type=r.get(item, "delta_type", str, where),
            kwargs=r.get(item, "kwargs", dict, where),
            size=r.get(item, "size", int, where),
            key=r.get(item, "key", str, where, optional=True) or item["delta_type"],
            pass_index=r.get(item, "pass", int, where, optional=True) or 0,
        )
        try:
            delta_type = get_delta_type(entry.delta_type)
            entry = dataclasses.replace(entry, kwargs=delta_type.resolve(entry.kwargs))
        except DeltaTypeError as error:
            raise r.fail(f"{where}: {error}") from None
        if entry.size < 1:
            raise r.fail(f"{where}: size must be positive, got {entry.size}")
        if (entry.path, entry.key) in seen:
            raise r.fail(f"{where}: a second delta with key {entry.key!r} at {entry.path}")
        seen.add((entry.path, entry.key))
        structure.chosen.append(entry)
    for i, item in enumerate(r.get(data, "candidates", list, "")):
        where = f"candidates[{i}]"
        for key, types in (("path", str), ("delta_type", str), ("size", int)):
            r.get(item, key, types, where)
        for key in ("alpha", "p"):
            r.get(item, key, (int, float), where, optional=True)
        structure.candidates.append(item)
    total = r.get(data, "total_size", int, "")
    if total != structure.total_size:
        raise r.fail(f"total_size {total} but the chosen sizes add up to {structure.total_size}")
    check_budget(structure)
    if positions is not None:
        structure.candidates_for(positions)
    return structure


def check_budget(structure: Structure) -> None:
    """Raises StructureError if the structure's budget fields disagree or its total exceeds them."""
    where = structure.source
    if structure.budget is not None and structure.backbone_params is not None:
        try:
            expected = budget_params(structure.budget, structure.backbone_params)
        except BudgetError as error:
            raise StructureError(f"{where}: {error}") from None
        if structure.budget_params is not None and structure.budget_params != expected:
            raise StructureError(f"{where}: budget.params {structure.budget_params} but budget {structure.budget} of {structure.backbone_params} is {expected}")
    if structure.budget_params is not None and structure.total_size > structure.budget_params:
        raise StructureError(f"{where}: total size {structure.total_size} is over the budget of {structure.budget_params} parameters")


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StructureError(f"{path}: no such structure file") from None
    except json.JSONDecodeError as error:
        raise StructureError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None


def load_structure(path: str | Path, positions: Sequence[Position] | None = None) -> Structure:
    """Reads and validates a structure file; with ``positions``, also checks that it fits that backbone."""
    return structure_from_json(_read_json(path), positions, source=str(path))


def structure_to_reference(structure: Structure) -> list[dict[str, Any]]:
    """The reference implementation's format: one dict per pass, HF module name -> slot -> type -> kwargs."""
    passes: list[dict[str, Any]] = [{} for _ in range(max((e.pass_index for e in structure.chosen), default=0) + 1)]
    for entry in structure.chosen:
        delta_type = get_delta_type(entry.delta_type)
        if delta_type.reference_name is None:
            raise StructureError(f"{structure.source}: {entry.delta_type} at {entry.path} has no reference-implementation name")
        slots = passes[entry.pass_index].setdefault(hf_module_name(entry.path), {})
        types = slots.setdefault(delta_type.slot, {})
        if delta_type.reference_name in types:
            raise StructureError(f"{structure.source}: two {delta_type.reference_name} deltas at {entry.path} cannot be written in the reference format")
        types[delta_type.reference_name] = delta_type.to_reference_kwargs(entry.kwargs)
    return passes


def structure_from_reference(data: Any, positions: Sequence[Position], source: str = "<reference structure>") -> Structure:
    """Reads the reference format onto a backbone's positions (sizes are computed from them)."""
    r = _Reader(source)
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise r.fail("a reference structure must be a JSON list of objects (one per pass)")
    by_hf_name = {hf_module_name(p.name): p for p in positions}
    order = {p.name: i for i, p in enumerate(positions)}
    entries: list[tuple[int, int, int, StructureEntry]] = []
    for pass_index, modules in enumerate(data):
        for module_name, slots in modules.items():
            where = f"pass {pass_index} {module_name!r}"
            position = by_hf_name.get(module_name)
            if position is None:
                raise r.fail(f"{where}: no such module in the given backbone")
            if not isinstance(slots, dict):
                raise r.fail(f"{where}: must map 'parallel'/'sequential' to delta types")
            for slot, types in slots.items():
                if slot not in ("parallel", "sequential") or not isinstance(types, dict):
                    raise r.fail(f"{where}: {slot!r} must be 'parallel' or 'sequential' with an object of delta types")
                for reference_name, reference_kwargs in types.items():
                    try:
                        delta_type = delta_type_for_reference(reference_name)
                        if delta_type.slot != slot:
                            raise DeltaTypeError(f"{reference_name} belongs in the {delta_type.slot!r} slot, not {slot!r}")
                        if not isinstance(reference_kwargs, dict):
                            raise DeltaTypeError(f"{reference_name} kwargs must be an object")
                        kwargs = delta_type.from_reference_kwargs(reference_kwargs)
                        candidate = make_candidate(0, position, delta_type.name, kwargs, pass_index=pass_index)
                    except DeltaTypeError as error:
                        raise r.fail(f"{where}: {error}") from None
                    entry = StructureEntry(position.name, delta_type.name, candidate.kwargs, candidate.size, candidate.key, pass_index)
                    entries.append((pass_index, order[position.name], slot != "parallel", entry))
    entries.sort(key=lambda item: item[:3])
    structure = Structure([e for *_, e in entries], source=source)
    seen = [(e.path, e.key) for e in structure.chosen]
    if len(set(seen)) != len(seen):
        raise r.fail("the same delta type appears twice at one module (in two passes)")
    return structure


def load_reference_structure(path: str | Path, positions: Sequence[Position]) -> Structure:
    """Reads a reference-format structure file (e.g. structure_config/avg/transfer_mrpc_1389.json)."""
    return structure_from_reference(_read_json(path), positions, source=str(path))


def save_reference_structure(path: str | Path, structure: Structure) -> None:
    """Writes ``structure`` in the reference implementation's format."""
    Path(path).write_text(json.dumps(structure_to_reference(structure), indent=4) + "\n")
