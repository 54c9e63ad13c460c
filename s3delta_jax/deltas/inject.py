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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from s3delta_jax.deltas.modules import get_delta_type
from s3delta_jax.deltas.positions import CALL, first_input
from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.errors import UserError


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
    node: Any = delta
    for part in (*candidate.position.tree_path, candidate.key):
        if not isinstance(node, Mapping) or part not in node:
            raise InjectionError(f"the delta pytree has no parameters for candidate {candidate.name} (missing {part!r})")
        node = node[part]
    return node


def _by_call(candidates: Sequence[Candidate]) -> dict[tuple[tuple[str, ...], str], tuple[list[Candidate], list[Candidate]]]:
    """(module path, method) -> (parallel candidates, sequential candidates), each in index order."""
    table: dict[tuple[tuple[str, ...], str], tuple[list[Candidate], list[Candidate]]] = {}
    for candidate in sorted(candidates, key=lambda c: c.index):
        parallel, sequential = table.setdefault((candidate.position.path, candidate.position.method), ([], []))
        (parallel if candidate.slot == "parallel" else sequential).append(candidate)
    return table


def with_deltas(
    apply_fn: Callable[..., Any],
    candidates: Sequence[Candidate],
    delta: Mapping[str, Any],
    gate_values: jax.Array | None = None,
) -> Callable[..., Any]:
    """Wraps ``apply_fn`` (an un-jitted ``model.apply``) so that the candidates' deltas act.

    Args:
      apply_fn: ``model.apply``; the returned function has its signature (variables, *args,
        method=..., mutable=..., rngs=..., **kwargs) and returns what it returns.
      candidates: the deltas to inject.
      delta: their parameters, as made by :func:`init_delta` (may hold more than ``candidates``).
      gate_values: f32[N] gates z indexed by ``candidate.index`` (soft gates during search), or
        None: every candidate is fully on, with no gate (re-training a chosen structure).

    Differentiable w.r.t. ``delta`` and ``gate_values``; works under ``jax.jit`` and with mutable
    collections. Pass the plain ``model.apply``, not a jitted one: a jitted function's cached
    trace would not see the interceptor.
    """
    table = _by_call(candidates)
    weights = {c.name: candidate_params(delta, c) for c in candidates}
    if gate_values is not None and candidates:
        needed = max(c.index for c in candidates) + 1
        if gate_values.ndim != 1 or gate_values.shape[0] < needed:
            raise InjectionError(f"gate_values must be a vector of at least {needed} gates (max candidate index + 1), got shape {gate_values.shape}")

    def contribution(candidate: Candidate, x: jax.Array, y: jax.Array) -> jax.Array:
        delta_type = get_delta_type(candidate.delta_type)
        params = weights[candidate.name]
        gate = None if gate_values is None else gate_values[candidate.index]
        if gate is not None and delta_type.gate_params:  # z Delta(x) as Delta with z-scaled parameters
            params = {name: gate * value if name in delta_type.gate_params else value for name, value in params.items()}
        out = delta_type.apply(params, x, y, candidate.position, **candidate.kwargs)
        if gate is not None and not delta_type.gate_params:
            out = gate * out
        return out.astype(y.dtype)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name not in (CALL, "attend"):
            return next_fun(*args, **kwargs)
        here = table.get((tuple(context.module.path), context.method_name))
        y = next_fun(*args, **kwargs)
        if here is None:
            return y
        parallel, sequential = here
        if not isinstance(y, jax.Array):
            name = (parallel or sequential)[0].position.name
            raise InjectionError(f"{name}: the module returned {type(y).__name__}, not one array")
        x = first_input(context, args, kwargs) if parallel else None
        out = y
        for candidate in parallel:
            out = out + contribution(candidate, x, y)
        augmented = out
        for candidate in sequential:
            out = out + contribution(candidate, x, augmented)
        return out

    def apply(*args: Any, **kwargs: Any) -> Any:
        with nn.intercept_methods(interceptor):
            return apply_fn(*args, **kwargs)

    return apply
