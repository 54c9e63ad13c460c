"""Injecting deltas into a frozen Flax model with ``nn.intercept_methods`` (design section 3).

The backbone's code knows nothing about deltas. While the model runs, an interceptor looks up
each module call by its path; where candidates sit it returns (reference section 1.3)

    out = y + sum_parallel z_i Delta_i(x)
    out = out + sum_sequential z_j Delta_j(out)      (every sequential delta sees the same out)

with x the module input and y its frozen output. The lookup happens at trace time, so under
``jax.jit`` it costs nothing at run time. A soft gate z_i multiplies the delta's smallest tensors that
its contribution is linear in (``DeltaType.gate_params``: LoRA's B [r, out], a bias or scale vector),
not the [batch, length, out] contribution, so gating adds no activation-sized work.

The delta pytree nests each candidate's parameters by its position's path, then its key:
``delta['encoder']['block_0']['layer_0']['SelfAttention']['q']['lora'] == {'A': ..., 'B': ...}``.
While the model runs, the parameters (and the gates) reach each module as variable collections
nested the same way, read from the module's scope; so a model that runs its layers under
``nn.scan`` hands every layer its own slice of them (``deltas/scan.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.deltas.modules import get_delta_type
from s3delta_jax.deltas.positions import CALL, first_input
from s3delta_jax.deltas.scan import ScanError, ScannedLayers
from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.errors import UserError


# The variable collections through which with_deltas hands each module its deltas and gates.
DELTA_COLLECTION = "delta"
GATE_COLLECTION = "delta_gates"


class InjectionError(UserError, ValueError):
    """Deltas that do not fit the candidates or the module they are injected into."""


def init_delta(key: jax.Array, candidates: Sequence[Candidate]) -> dict[str, Any]:
    """Fresh parameters for every candidate, nested by position path then candidate key.

    Candidate i is initialised from ``jax.random.fold_in(key, candidate.index)``, so its weights
    do not depend on which other candidates exist.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise InjectionError(f"two candidates named {duplicate}")

    delta: dict[str, Any] = {}
    for candidate in candidates:
        node = delta
        for part in candidate.position.tree_path:
            node = node.setdefault(part, {})
        delta_type = get_delta_type(candidate.delta_type)
        node[candidate.key] = delta_type.init(jax.random.fold_in(key, candidate.index), candidate.position, **candidate.kwargs)
    return delta


def delta_param_count(delta: Any) -> int:
    """Number of scalars in a delta pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(delta))


def candidate_params(delta: Mapping[str, Any], candidate: Candidate) -> dict[str, jax.Array]:
    """The parameters of one candidate inside a delta pytree."""
    return _params_at(delta, (*candidate.position.tree_path, candidate.key), candidate)


def _params_at(delta: Mapping[str, Any], path: Sequence[str], candidate: Candidate) -> Any:
    node: Any = delta
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            raise InjectionError(f"the delta pytree has no parameters for candidate {candidate.name} (missing {part!r})")
        node = node[part]
    return node


def _slot(candidate: Candidate) -> str:
    """The key of a candidate's entry in its module's scope: its key, '@method' appended for a method
    other than ``__call__`` (the tied projection's ``attend``)."""
    method = candidate.position.method
    return candidate.key if method == CALL else f"{candidate.key}@{method}"


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _signature(candidate: Candidate) -> tuple[Any, ...]:
    """What must agree between the layers of a scan at one place: the delta, its settings, its slot."""
    return candidate.key, candidate.delta_type, sorted(candidate.kwargs.items()), candidate.slot


@dataclasses.dataclass
class _Placement:
    """Where candidates act as the model runs.

    calls: (module path, method) -> (parallel candidates, sequential candidates), each in index order;
      inside scanned layers the path is the scan body's and the candidates are the first layer's.
    unscanned: the candidates outside scanned layers.
    scanned: (scan body module path, slot) -> that slot's candidate in each scanned layer, in order.
    """

    calls: dict[tuple[tuple[str, ...], str], tuple[list[Candidate], list[Candidate]]]
    unscanned: list[Candidate]
    scanned: dict[tuple[tuple[str, ...], str], list[Candidate]]


def _place(candidates: Sequence[Candidate], scans: Sequence[ScannedLayers]) -> _Placement:
    """The candidates' places; every scanned layer must hold the same candidates (ScanError otherwise)."""
    placement = _Placement({}, [], {})
    per_layer: dict[tuple[tuple[str, ...], str], tuple[ScannedLayers, dict[int, list[Candidate]]]] = {}
    for candidate in sorted(candidates, key=lambda c: c.index):
        path, method = candidate.position.path, candidate.position.method
        scan = next((scan for scan in scans if scan.scanned_path(path) is not None), None)
        if scan is None:
            placement.unscanned.append(candidate)
        else:
            path, offset = scan.scanned_path(path)
            per_layer.setdefault((path, method), (scan, {}))[1].setdefault(offset, []).append(candidate)
            if offset:
                continue
        parallel, sequential = placement.calls.setdefault((path, method), ([], []))
        (parallel if candidate.slot == "parallel" else sequential).append(candidate)
    for (path, _), (scan, layers) in per_layer.items():
        signatures = [[_signature(c) for c in layers.get(offset, [])] for offset in range(scan.count)]
        differing = next((offset for offset, signature in enumerate(signatures) if signature != signatures[0]), None)
        if differing is not None:
            raise ScanError(
                f"{'/'.join(path)}: the candidates of {scan.layer_names()[differing]} differ from those of "
                f"{scan.layer_names()[0]}, and one nn.scan runs both: give every scanned layer the same "
                "candidates (a search space that is the same in each layer), or set scan_layers off")
        for slot_index, first in enumerate(layers[0]):
            placement.scanned[(path, _slot(first))] = [layers[offset][slot_index] for offset in range(scan.count)]
    return placement


def with_deltas(
    apply_fn: Callable[..., Any],
    candidates: Sequence[Candidate],
    delta: Mapping[str, Any],
    gate_values: jax.Array | None = None,
    scans: Sequence[ScannedLayers] = (),
    stacked_delta: bool = False,
) -> Callable[..., Any]:
    """Wraps ``apply_fn`` (an un-jitted ``model.apply``) so that the candidates' deltas act.

    Args:
      apply_fn: ``model.apply``; the returned function has its signature (variables, *args,
        method=..., mutable=..., rngs=..., **kwargs) and returns what it returns.
      candidates: the deltas to inject.
      delta: their parameters, as made by :func:`init_delta` (may hold more than ``candidates``).
      gate_values: f32[N] gates z indexed by ``candidate.index`` (soft gates during search), or
        None: every candidate is fully on, with no gate (re-training a chosen structure).
      scans: the layers the model runs under ``nn.scan`` (its params stacked by
        ``deltas.scan.stack_layers``); the candidates keep their unscanned positions. Every scanned layer
        must hold the same candidates.
      stacked_delta: ``delta`` is in the scanned layout already (``stack_layers(delta, scans)``, as
        the search step keeps it), not the unscanned one.

    The candidates' parameters and gates reach each module as two variable collections,
    ``DELTA_COLLECTION`` and ``GATE_COLLECTION``, nested by module path like ``params`` (and, inside
    scanned layers, stacked like them), which the interceptor reads from the module's scope.
    Differentiable w.r.t. ``delta`` and ``gate_values``; works under ``jax.jit`` and with mutable
    collections. Pass the plain ``model.apply``, not a jitted one: a jitted function's cached
    trace would not see the interceptor.
    """
    placement = _place(candidates, scans)
    if gate_values is not None and candidates:
        needed = max(c.index for c in candidates) + 1
        if gate_values.ndim != 1 or gate_values.shape[0] < needed:
            raise InjectionError(f"gate_values must be a vector of at least {needed} gates (max candidate index + 1), got shape {gate_values.shape}")
    weights: dict[str, Any] = {}
    gates: dict[str, Any] = {}
    for candidate in placement.unscanned:
        where = (*candidate.position.path, _slot(candidate))
        _set(weights, where, candidate_params(delta, candidate))
        if gate_values is not None:
            _set(gates, where, gate_values[candidate.index])
    for (path, slot), layers in placement.scanned.items():
        if stacked_delta:
            params = _params_at(delta, (*path, layers[0].key), layers[0])
        else:
            params = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves),
                                            *[candidate_params(delta, c) for c in layers])
        _set(weights, (*path, slot), params)
        if gate_values is not None:  # one gather per slot, whatever the depth
            _set(gates, (*path, slot), gate_values[np.array([c.index for c in layers])])
    collections = {DELTA_COLLECTION: weights}
    if gate_values is not None:
        collections[GATE_COLLECTION] = gates

    def contribution(candidate: Candidate, scope: Mapping[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
        delta_type = get_delta_type(candidate.delta_type)
        params = scope[DELTA_COLLECTION][_slot(candidate)]
        gate = None if gate_values is None else scope[GATE_COLLECTION][_slot(candidate)]
        if gate is not None and delta_type.gate_params:  # z Delta(x) as Delta with z-scaled parameters
            params = {name: gate * value if name in delta_type.gate_params else value for name, value in params.items()}
        out = delta_type.apply(params, x, y, candidate.position, **candidate.kwargs)
        if gate is not None and not delta_type.gate_params:
            out = gate * out
        return out.astype(y.dtype)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name not in (CALL, "attend"):
            return next_fun(*args, **kwargs)
        here = placement.calls.get((tuple(context.module.path), context.method_name))
        y = next_fun(*args, **kwargs)
        if here is None:
            return y
        parallel, sequential = here
        if not isinstance(y, jax.Array):
            name = (parallel or sequential)[0].position.name
            raise InjectionError(f"{name}: the module returned {type(y).__name__}, not one array")
        scope = context.module.variables  # this layer's slice inside a scan
        x = first_input(context, args, kwargs) if parallel else None
        out = y
        for candidate in parallel:
            out = out + contribution(candidate, scope, x, y)
        augmented = out
        for candidate in sequential:
            out = out + contribution(candidate, scope, x, augmented)
        return out

    def apply(variables: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        taken = sorted(set(collections) & set(variables))
        if taken:
            raise InjectionError(f"the variables already hold the collection(s) {', '.join(taken)}, which "
                                 "with_deltas adds: pass the model's own variables (e.g. {'params': params})")
        with nn.intercept_methods(interceptor):
            return apply_fn({**variables, **collections}, *args, **kwargs)

    return apply
