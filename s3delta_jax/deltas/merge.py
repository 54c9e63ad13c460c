"""Folding trained deltas into the backbone's parameters, for inference without interception.

LoRA folds into the kernel (W + alpha/r A B), LNFit into the norm's scale (s + s_delta) and
BitFit into the module's own bias where it has one. The result is exact up to float rounding:
a parallel delta's contribution is linear in the module's parameters, and a BitFit bias is folded
only where no unfolded sequential delta at the same place would then see it in its input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from s3delta_jax.deltas.inject import candidate_params
from s3delta_jax.deltas.modules import get_delta_type
from s3delta_jax.deltas.spaces import Candidate


def _module_params(params: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    node: Any = params
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _replace(params: Mapping[str, Any], path: tuple[str, ...], module_params: Mapping[str, Any]) -> dict[str, Any]:
    if not path:
        return dict(module_params)
    head, *rest = path
    return {**params, head: _replace(params[head], tuple(rest), module_params)}


def merge_deltas(params: Mapping[str, Any], candidates: Sequence[Candidate], delta: Mapping[str, Any]) -> tuple[dict[str, Any], list[Candidate]]:
    """Folds every foldable delta (gates fully on) into a copy of the backbone ``params``.

    Args:
      params: the backbone's 'params' collection (not the whole variables dict).
      candidates: the injected deltas (a re-trained structure).
      delta: their parameters.

    Returns:
      (new params, the candidates that could not be folded, in order); run the model on the new
      params with ``with_deltas(apply_fn, unmerged, delta)`` to reproduce the injected model.
    """
    merged: dict[str, Any] = dict(params)
    unmerged: list[Candidate] = []
    by_position: dict[tuple[tuple[str, ...], str], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.index):
        by_position.setdefault((candidate.position.path, candidate.position.method), []).append(candidate)
    for (path, _), here in by_position.items():
        sequential_all_constant = all(
            get_delta_type(c.delta_type).input_independent for c in here if c.slot == "sequential"
        )
        for candidate in here:
            delta_type = get_delta_type(candidate.delta_type)
            module = _module_params(merged, path)
            foldable = module is not None and (candidate.slot == "parallel" or sequential_all_constant)
            folded = delta_type.fold(module, candidate_params(delta, candidate), candidate.position, **candidate.kwargs) if foldable else None
            if folded is None:
                unmerged.append(candidate)
            else:
                merged = _replace(merged, path, folded)
    return merged, unmerged
