"""Layers run under ``nn.scan``: how their per-layer subtrees stack into one, for params and deltas.

A model that scans its repeated layers (t5x's and MaxText's ``scan_layers``) keeps their weights in
one subtree with a leading layer axis, e.g. ``encoder/block_scan/layer_0/SelfAttention/q/kernel``
f32[N, d, h] instead of ``encoder/block_{0..N-1}/...`` f32[d, h]. A :class:`ScannedLayers`
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

    `kept`: subtrees (paths inside the first layer) that only the first layer has and that stay
    outside the scan at their unscanned path. E.g. T5's encoder: ScannedLayers(parent=('encoder',),
    layer_prefix='block_', first=0, count=6, name='block_scan',
    kept=(('layer_0', 'SelfAttention', 'relative_attention_bias'),)): block 0's relative position
    table, which the stack applies before the scan and hands to every block.
    """

    parent: tuple[str, ...]
    layer_prefix: str
    first: int
    count: int
    name: str
    kept: tuple[tuple[str, ...], ...] = ()

    def layer_names(self) -> list[str]:
        return [f"{self.layer_prefix}{i}" for i in range(self.first, self.first + self.count)]

    def scanned_path(self, path: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
        """An unscanned path inside one of these layers -> (its path in the scan body, layer offset);
        None for a path outside them."""
        depth = len(self.parent)
        if tuple(path[:depth]) != self.parent or len(path) <= depth or path[depth] not in self.layer_names():
            return None
        offset = int(path[depth][len(self.layer_prefix):]) - self.first
        inner = tuple(path[depth + 1:])
        if offset == 0 and any(inner[:len(kept)] == kept for kept in self.kept):
            return None
        return (*self.parent, self.name, *inner), offset


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


def _split(layer: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`layer` without the subtrees at `paths`, and those subtrees alone (same nesting; {} if none)."""
    rest, kept = dict(layer), {}
    for path in paths:
        node = _node(rest, path[:-1])
        if node is None or path[-1] not in node:
            continue
        subtree = node[path[-1]]
        for part in reversed(path):
            subtree = {part: subtree}
        kept = _merge(kept, subtree)
        rest = _replace(rest, path[:-1], {key: value for key, value in node.items() if key != path[-1]})
    return rest, kept


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The union of two nested dicts (subtrees present in both are merged)."""
    out = dict(a)
    for key, value in b.items():
        both = isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
        out[key] = _merge(out[key], value) if both else value
    return out


def stack_layers(tree: Mapping[str, Any], scans: Sequence[ScannedLayers], what: str = "tree") -> dict[str, Any]:
    """The scanned layout of `tree` (nested by unscanned module path): for each scan, its layers'
    subtrees become one subtree `name` whose leaves are stacked on a new leading axis (the first
    layer's `kept` subtrees stay where they are).

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
        kept = {}
        if layers[0] is not None:
            layers[0], kept = _split(layers[0], scan.kept)
        structures = {jax.tree_util.tree_structure(layer) for layer in layers}
        if len(structures) != 1 or any(layer is None for layer in layers):
            raise ScanError(
                f"the {what} differs between the layers {scan.layer_names()[0]} ... {scan.layer_names()[-1]} "
                f"of {'/'.join(scan.parent) or 'the model'}, which one nn.scan runs: give every scanned layer "
                "the same deltas (a search space that is the same in each layer), or set scan_layers off")
        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers)
        rest = {key: value for key, value in node.items() if key not in scan.layer_names()}
        if kept:
            rest[scan.layer_names()[0]] = kept
        out = _replace(out, scan.parent, {**rest, scan.name: stacked})
    return out


def unstack_layers(tree: Mapping[str, Any], scans: Sequence[ScannedLayers]) -> dict[str, Any]:
    """The inverse of :func:`stack_layers`: each scan's subtree `name` back into its layers (the
    first with its `kept` subtrees)."""
    out = dict(tree)
    for scan in scans:
        node = _node(out, scan.parent)
        if node is None or scan.name not in node:
            continue
        stacked = node[scan.name]
        layers = {name: jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked)
                  for i, name in enumerate(scan.layer_names())}
        first = scan.layer_names()[0]
        if first in node:
            layers[first] = _merge(node[first], layers[first])
        rest = {key: value for key, value in node.items() if key != scan.name}
        out = _replace(out, scan.parent, {**rest, **layers})
    return out


__all__ = ["ScanError", "ScannedLayers", "stack_layers", "unstack_layers"]
