"""Search spaces: rules that place delta types on positions, expanded into numbered candidates.

A rule's ``pattern`` is a regular expression matched against the END of a position's name (its
'/'-joined Flax path, e.g. 'encoder/block_3/layer_0/SelfAttention/q'), starting at a path
component boundary: ``re.search(f"(?:^|/)(?:{pattern})$", name)``. So 'SelfAttention/q' matches
every self-attention query (the reference's "ends with the key at a '.' boundary" test), while
'layer_norm' does not match 'final_layer_norm'. Use '.*' to span components, '^encoder/.*' to
restrict to the encoder. The tied output projection of T5 is named 'shared@attend'.

A space is a list of passes, each a list of rules. Expansion order (the reference's module order):
all pass-0 candidates before pass-1; within a pass, positions in call order; at one position,
parallel-slot deltas before sequential ones, then rule order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from s3delta_jax.deltas.modules import DeltaTypeError, get_delta_type
from s3delta_jax.deltas.positions import POSITION_KINDS, Position
from s3delta_jax.errors import UserError


class SpaceError(UserError, ValueError):
    """A rule that is malformed or matches nothing, or two deltas with one key at one position."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Place ``delta_type(**kwargs)`` on every position of one of ``kinds`` whose name ends with ``pattern``.

    ``kinds`` is a tuple of position kinds (a single kind may be given as a string). ``key`` names
    the delta at its position (default: the delta type's name); it must be unique per position,
    so two LoRAs at one place need two keys.
    """

    pattern: str
    kinds: tuple[str, ...]
    delta_type: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str | None = None

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        try:
            re.compile(self.pattern)
            delta = get_delta_type(self.delta_type)
            delta.resolve(self.kwargs)
        except (re.error, DeltaTypeError) as error:
            raise SpaceError(f"{self}: {error}") from None
        bad = [k for k in kinds if k not in POSITION_KINDS or k not in delta.kinds]
        if bad or not kinds:
            raise SpaceError(f"{self}: {self.delta_type} cannot act on kinds {bad or '()'} (it acts on {sorted(delta.kinds)})")

    @property
    def delta_key(self) -> str:
        return self.key or self.delta_type

    def matches(self, position: Position) -> bool:
        return position.kind in self.kinds and re.search(f"(?:^|/)(?:{self.pattern})$", position.name) is not None

    def __str__(self) -> str:
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Rule({self.pattern!r} [{'|'.join(self.kinds)}] -> {self.delta_type}({kwargs}))"


Space = Sequence[Sequence[Rule]]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One delta module that may be selected: ``delta_type(**kwargs)`` at ``position``.

    ``index`` numbers the candidates of an expansion (the gate vector's index); ``size`` is
    |delta_i|; ``key`` names the delta at its position in the delta pytree.
    """

    index: int
    position: Position
    delta_type: str
    kwargs: Mapping[str, Any]
    size: int
    key: str
    pass_index: int = 0

    @property
    def slot(self) -> str:
        return get_delta_type(self.delta_type).slot

    @property
    def name(self) -> str:
        """'<position name>:<key>', unique within an expansion."""
        return f"{self.position.name}:{self.key}"


def make_candidate(index: int, position: Position, delta_type: str, kwargs: Mapping[str, Any], key: str | None = None, pass_index: int = 0) -> Candidate:
    """A Candidate with resolved kwargs and its size; raises DeltaTypeError if it cannot act there."""
    delta = get_delta_type(delta_type)
    delta.check_position(position)
    resolved = delta.resolve(kwargs)
    size = delta.num_params(position, **resolved)
    return Candidate(index, position, delta_type, resolved, size, key or delta_type, pass_index)


@dataclasses.dataclass(frozen=True)
class RuleMatch:
    """How many positions one rule of a space matched."""

    pass_index: int
    rule_index: int
    rule: Rule
    count: int


@dataclasses.dataclass(frozen=True)
class Expansion:
    candidates: list[Candidate]
    matches_per_rule: list[RuleMatch]

    @property
    def sizes(self) -> np.ndarray:
        """int64[N]: |delta_i| in candidate order."""
        return np.array([c.size for c in self.candidates], dtype=np.int64)

    @property
    def total_size(self) -> int:
        return int(self.sizes.sum())


def expand(space: Space, positions: Sequence[Position]) -> Expansion:
    """Expands a space (passes of rules) over a model's positions into numbered candidates.

    Preset spaces are named by model family: `backbone.space(name)` returns one's rules.
    Raises SpaceError if a rule matches no position, or two rules put the same key at one position.
    """
    if isinstance(space, str):
        raise SpaceError(f"expand() takes rules, not the preset name {space!r}: get a preset's rules from its "
                         "model family, e.g. backbone.space(name) or s3delta_jax.models.t5.spaces.SPACES[name]")
    passes = space
    candidates: list[Candidate] = []
    matches: list[RuleMatch] = []
    owner: dict[tuple[str, str], str] = {}
    for pass_index, rules in enumerate(passes):
        counts = [0] * len(rules)
        for position in positions:
            hits = [(i, r) for i, r in enumerate(rules) if r.matches(position)]
            hits.sort(key=lambda hit: (get_delta_type(hit[1].delta_type).slot != "parallel", hit[0]))
            for rule_index, rule in hits:
                counts[rule_index] += 1
                slot_key = (position.name, rule.delta_key)
                here = f"pass {pass_index} {rule}"
                if slot_key in owner:
                    raise SpaceError(f"{here} and {owner[slot_key]} both put key {rule.delta_key!r} at {position.name}; give one a distinct key")
                owner[slot_key] = here
                candidates.append(make_candidate(len(candidates), position, rule.delta_type, rule.kwargs, rule.delta_key, pass_index))
        for rule_index, (rule, count) in enumerate(zip(rules, counts)):
            if count == 0:
                raise SpaceError(f"pass {pass_index} rule {rule_index} {rule} matches no position of the model")
            matches.append(RuleMatch(pass_index, rule_index, rule, count))
    return Expansion(candidates, matches)


def candidates_from_mask(candidates: Sequence[Candidate], mask: Sequence[bool] | np.ndarray) -> list[Candidate]:
    """The candidates where ``mask`` (bool[N], e.g. from search.select) is true, in order."""
    mask = np.asarray(mask)
    if mask.shape != (len(candidates),) or mask.dtype != np.bool_:
        raise SpaceError(f"candidates_from_mask: mask must be bool[{len(candidates)}], got {mask.dtype}{list(mask.shape)}")
    return [c for c, keep in zip(candidates, mask) if keep]


def type_breakdown(candidates: Sequence[Candidate]) -> dict[str, dict[str, int]]:
    """{delta type: {'count': n, 'params': sum of sizes}} in first-appearance order."""
    breakdown: dict[str, dict[str, int]] = {}
    for c in candidates:
        entry = breakdown.setdefault(c.delta_type, {"count": 0, "params": 0})
        entry["count"] += 1
        entry["params"] += c.size
    return breakdown
