"""Layers run under ``nn.scan``: how their per-layer subtrees stack into one, for params and deltas.

A model that scans its repeated layers (t5x's and MaxText's ``scan_layers``) keeps their weights in
one subtree with a leading layer axis, e.g. ``encoder/block_scan/layer_0/SelfAttention/q/kernel``
f32[N - 1, d, h] instead of ``encoder/block_{1..N-1}/...`` f32[d, h]. A :class:`ScannedLayers`
says which layers a model scans; :func:`stack_layers` and :func:`unstack_layers` convert any pytree
nested by module path (params, the delta pytree, the gates) between the two layouts, so positions,
structures, checkpoints and Hugging Face names keep the unscanned paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from s3delta_jax.errors import UserError


class ScanError(UserError, ValueError):
    """A pytree whose scanned layers do not all hold the same structure."""


@dataclasses.dataclass(frozen=True)
class ScannedLayers:
    """Layers ``{layer_prefix}{first} ... {layer_prefix}{first + count - 1}`` under `parent`, run by
    one ``nn.scan`` module named `name` (same parent) with the layer index as leading axis.

    E.g. T5's encoder: ScannedLayers(parent=('encoder',), layer_prefix='block_', first=1, count=5,
    name='block_scan') (block 0 owns the relative position table and runs outside the scan).
    """

    parent: tuple[str, ...]
    layer_prefix: str
    first: int
    count: int
    name: str

    def layer_names(self) -> list[str]:
        return [f"{self.layer_prefix}{i}" for i in range(self.first, self.first + self.count)]

    def scanned_path(self, path: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
        """An unscanned path inside one of these layers -> (its path in the scan body, layer offset);
        None for a path outside them."""
        depth = len(self.parent)
        if tuple(path[:depth]) != self.parent or len(path) <= depth or path[depth] not in self.layer_names():
            return None
        offset = int(path[depth][len(self.layer_prefix):]) - self.first
        return (*self.parent, self.name, *path[depth + 1:]), offset


def _node(tree: Mapping[str, Any], parent: Sequence[str]) -> Mapping[str, Any] | None:
    for part in parent:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _replace(tree: Mapping[str, Any], parent: Sequence[str], node: dict[str, Any]) -> dict[str, Any]:
    """A copy of `tree` with the subtree at `parent` replaced by `node` (copies only that path)."""
    if not parent:
        return node
    return {**tree, parent[0]: _replace(tree[parent[0]], parent[1:], node)}


def stack_layers(tree: Mapping[str, Any], scans: Sequence[ScannedLayers], what: str = "tree") -> dict[str, Any]:
    """The scanned layout of `tree` (nested by unscanned module path): for each scan, its layers'
    subtrees become one subtree `name` whose leaves are stacked on a new leading axis.

    A scan none of whose layers is in `tree` is left out (no deltas sit there); one whose layers
    are there only in part, or with different structures, raises ScanError (naming `what`).
    """
    out = dict(tree)
    for scan in scans:
        node = _node(out, scan.parent)
        if node is None:
            continue
        present = [name for name in scan.layer_names() if name in node]
        if not present:
            continue
        layers = [node.get(name) for name in scan.layer_names()]
        structures = {jax.tree_util.tree_structure(layer) for layer in layers}
        if len(structures) != 1 or any(layer is None for layer in layers):
            raise ScanError(
                f"the {what} differs between the layers {scan.layer_names()[0]} ... {scan.layer_names()[-1]} "
                f"of {'/'.join(scan.parent) or 'the model'}, which one nn.scan runs: give every scanned layer "
                "the same deltas (a search space that is the same in each layer), or set scan_layers off")
        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers)
        rest = {key: value for key, value in node.items() if key not in scan.layer_names()}
        out = _replace(out, scan.parent, {**rest, scan.name: stacked})
    return out


def unstack_layers(tree: Mapping[str, Any], scans: Sequence[ScannedLayers]) -> dict[str, Any]:
    """The inverse of :func:`stack_layers`: each scan's subtree `name` back into its layers."""
    out = dict(tree)
    for scan in scans:
        node = _node(out, scan.parent)
        if node is None or scan.name not in node:
            continue
        stacked = node[scan.name]
        layers = {name: jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked)
                  for i, name in enumerate(scan.layer_names())}
        rest = {key: value for key, value in node.items() if key != scan.name}
        out = _replace(out, scan.parent, {**rest, **layers})
    return out


__all__ = ["ScanError", "ScannedLayers", "stack_layers", "unstack_layers"]
