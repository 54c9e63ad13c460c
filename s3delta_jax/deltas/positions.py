"""Positions: the places in a Flax model where a delta module can act, found by tracing.

A position is one module call in the model's call graph:

* ``linear``: an ``nn.Dense`` (or an ``nn.DenseGeneral`` that maps the last axis to one output axis),
  or the ``attend`` method of an ``nn.Embed`` (a tied output projection, e.g. T5's lm head);
  x: [..., in_features] -> y: [..., out_features].
* ``norm``: ``nn.LayerNorm`` / ``nn.RMSNorm`` over the last axis, or a class registered with
  :func:`register_norm`; x, y: [..., size].
* ``block``: any other non-root module whose ``__call__`` takes an array x as its first argument
  and returns one array y with the same last dimension (attention, feed-forward, a whole layer).

:func:`discover_positions` finds them by running ``model.init`` (or ``model.apply``) once under
``jax.eval_shape`` with an ``nn.intercept_methods`` interceptor that records every call: no
weights are allocated and no FLOPs are spent, so T5-large is traced in about a second.

Positions come in the order their first call starts (a block before its children). For T5 this
is Hugging Face's ``named_modules`` order except in one respect: a sub-layer's ``layer_norm`` is
called before its sibling ``SelfAttention`` / ``EncDecAttention`` / ``DenseReluDense`` and so comes
first, while HF defines (and lists) it after them. Only ties in the greedy selection by p can see
the difference.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Literal

import flax.linen as nn
import jax
import numpy as np

from s3delta_jax.errors import UserError

PositionKind = Literal["linear", "norm", "block"]
NormKind = Literal["rms", "layernorm"]
POSITION_KINDS: tuple[str, ...] = ("linear", "norm", "block")
CALL = "__call__"


class PositionError(UserError, ValueError):
    """A model, norm registration or position lookup that cannot be handled."""


@dataclasses.dataclass(frozen=True)
class Position:
    """One place in the backbone where a delta can act.

    Attributes:
      path: Flax module path, e.g. ('encoder', 'block_0', 'layer_0', 'SelfAttention', 'q').
      kind: 'linear', 'norm' or 'block'.
      in_features: last dimension of the module input x.
      out_features: last dimension of the module output y (== in_features for norms and blocks).
      module_type: class name of the module, e.g. 'Dense', 'T5LayerNorm', 'T5Attention'.
      norm_kind: 'rms' (no mean subtraction) or 'layernorm' (mean-centred); None if not a norm.
      epsilon: the norm's variance epsilon; None if not a norm.
      has_bias: whether the module has its own bias parameter (linears and norms).
      method: the intercepted method, '__call__' except for 'attend' (tied output projection).
      scale_param: name of a norm's scale parameter ('scale'), None if it has none.
      bias_param: name of the module's bias parameter ('bias'), None if it has none.
    """

    path: tuple[str, ...]
    kind: PositionKind
    in_features: int
    out_features: int
    module_type: str
    norm_kind: NormKind | None = None
    epsilon: float | None = None
    has_bias: bool = False
    method: str = CALL
    scale_param: str | None = None
    bias_param: str | None = None

    @property
    def name(self) -> str:
        """The '/'-joined path, with '@method' appended for a method other than ``__call__``."""
        suffix = "" if self.method == CALL else f"@{self.method}"
        return "/".join(self.path) + suffix

    @property
    def tree_path(self) -> tuple[str, ...]:
        """Keys under which this position's deltas are nested in the delta pytree."""
        return tuple(self.name.split("/"))

    @property
    def size(self) -> int:
        """Feature size of the output (what BitFit / LNFit / sequential adapters act on)."""
        return self.out_features


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """How a norm class normalises its input (used by LNFit and by merging)."""

    kind: NormKind
    epsilon_attr: str = "epsilon"
    scale_param: str | None = "scale"
    bias_param: str | None = None


_NORM_REGISTRY: dict[type, NormSpec] = {}


def register_norm(
    cls: type,
    kind: NormKind,
    epsilon_attr: str = "epsilon",
    scale_param: str | None = "scale",
    bias_param: str | None = None,
) -> None:
    """Declares that instances of the Flax module class ``cls`` are norms over the last axis.

    Args:
      cls: the module class (subclasses are covered too).
      kind: 'rms' (x / sqrt(mean(x^2) + eps)) or 'layernorm' ((x - mean) / sqrt(var + eps)).
      epsilon_attr: name of the attribute holding eps on the module instance.
      scale_param: name of the scale parameter (LNFit merges into it), e.g. 'scale' or 'weight'.
      bias_param: name of the bias parameter if the norm has one (BitFit merges into it).
    """
    if kind not in ("rms", "layernorm"):
        raise PositionError(f"register_norm({cls.__name__}): kind must be 'rms' or 'layernorm', got {kind!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PositionError(f"register_norm: {cls!r} is not a flax.linen Module class")
    _NORM_REGISTRY[cls] = NormSpec(kind, epsilon_attr, scale_param, bias_param)


def norm_spec(module: nn.Module) -> NormSpec | None:
    """The registered NormSpec of a module instance (nearest class in its MRO), or None."""
    for cls in type(module).__mro__:
        spec = _NORM_REGISTRY.get(cls)
        if spec is not None:
            return spec
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and _reduces_last_axis(module):
        kind: NormKind = "layernorm" if isinstance(module, nn.LayerNorm) else "rms"
        scale = "scale" if module.use_scale else None
        bias = "bias" if getattr(module, "use_bias", False) else None
        return NormSpec(kind, "epsilon", scale, bias)
    return None


def _reduces_last_axis(module: nn.Module) -> bool:
    def last_only(axes: Any) -> bool:
        return axes == -1 or tuple(np.atleast_1d(axes)) == (-1,)

    return last_only(module.reduction_axes) and last_only(module.feature_axes)


def _dense_features(module: nn.Module, x: Any) -> tuple[int, int, bool] | None:
    """(in, out, has_bias) if the module is a Dense-like map of the last axis, else None."""
    if isinstance(module, nn.Dense):
        return x.shape[-1], module.features, module.use_bias
    if isinstance(module, nn.DenseGeneral):
        features = tuple(np.atleast_1d(module.features))
        axis = tuple(np.atleast_1d(module.axis))
        if len(features) == 1 and axis in ((-1,), (x.ndim - 1,)) and not module.batch_dims:
            return x.shape[-1], int(features[0]), module.use_bias
    return None


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def first_input(context: nn.module.InterceptorContext, args: tuple, kwargs: dict) -> Any:
    """The module's first argument (x), whether passed positionally or by keyword; None if absent."""
    if args:
        return args[0]
    params = list(inspect.signature(context.orig_method).parameters)
    return kwargs.get(params[0]) if params else None


def classify_call(module: nn.Module, method: str, x: Any, y: Any) -> Position | None:
    """The Position of one intercepted module call, or None if no delta can act there."""
    path = tuple(module.path)
    name = type(module).__name__
    if not path or not _is_array(x) or not _is_array(y) or x.ndim == 0 or y.ndim == 0:
        return None
    if method == "attend" and isinstance(module, nn.Embed):
        return Position(path, "linear", x.shape[-1], y.shape[-1], name, method="attend")
    if method != CALL:
        return None
    dense = _dense_features(module, x)
    if dense is not None:
        d_in, d_out, has_bias = dense
        return Position(path, "linear", d_in, d_out, name, has_bias=has_bias, bias_param="bias" if has_bias else None)
    if isinstance(module, (nn.Dense, nn.DenseGeneral, nn.Embed, nn.Dropout)):
        return None
    spec = norm_spec(module)
    if spec is not None:
        epsilon = float(getattr(module, spec.epsilon_attr))
        return Position(
            path, "norm", x.shape[-1], y.shape[-1], name,
            norm_kind=spec.kind, epsilon=epsilon, has_bias=spec.bias_param is not None,
            scale_param=spec.scale_param, bias_param=spec.bias_param,
        )
    if y.shape[-1] == x.shape[-1]:
        return Position(path, "block", x.shape[-1], y.shape[-1], name)
    return None


def _split_static(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits values into (arrays to trace, everything else to close over)."""

    def all_arrays(value: Any) -> bool:
        leaves = jax.tree_util.tree_leaves(value)
        return bool(leaves) and all(_is_array(leaf) for leaf in leaves)

    dynamic = {k: v for k, v in values.items() if all_arrays(v)}
    static = {k: v for k, v in values.items() if k not in dynamic}
    return dynamic, static


def discover_positions(
    model: nn.Module,
    *args: Any,
    method: Any = None,
    variables: Any = None,
    rngs: Any = None,
    **kwargs: Any,
) -> list[Position]:
    """Traces one call of the model (shapes only) and returns its positions in first-call order.

    Args:
      model: an unbound Flax linen module.
      *args, **kwargs: the call's arguments; arrays may be ``jax.ShapeDtypeStruct``s.
        Non-array arguments (flags such as ``deterministic=True``) are passed through unchanged.
      method: optional method to trace instead of ``__call__`` (as in ``model.init``).
      variables: if given, ``model.apply(variables, ...)`` is traced (shapes suffice), else
        ``model.init(rngs, ...)``.
      rngs: PRNG keys for ``init``/``apply``; default ``{'params': key(0), 'dropout': key(1)}`` for init.

    Returns:
      One Position per module that was called, in the order of each module's first call.
    """
    positional = {str(i): a for i, a in enumerate(args)}
    dyn_args, static_args = _split_static(positional)
    dyn_kwargs, static_kwargs = _split_static(kwargs)
    # Keyed by (path, method) in the order calls start, so a block comes before its children.
    found: dict[tuple[tuple[str, ...], str], Position | None] = {}

    def record(next_fun, call_args, call_kwargs, context):
        if context.method_name not in (CALL, "attend"):
            return next_fun(*call_args, **call_kwargs)
        key = (tuple(context.module.path), context.method_name)
        first_call = key not in found
        if first_call:
            found[key] = None
        y = next_fun(*call_args, **call_kwargs)
        if first_call:
            x = first_input(context, call_args, call_kwargs)
            found[key] = classify_call(context.module, context.method_name, x, y)
        return y

    def traced(dyn_args, dyn_kwargs, variables):
        merged = {**dyn_args, **static_args}
        call_args = [merged[str(i)] for i in range(len(args))]
        with nn.intercept_methods(record):
            if variables is None:
                keys = rngs if rngs is not None else {"params": jax.random.key(0), "dropout": jax.random.key(1)}
                return model.init(keys, *call_args, method=method, **dyn_kwargs, **static_kwargs)
            extra = {} if rngs is None else {"rngs": rngs}
            return model.apply(variables, *call_args, method=method, **extra, **dyn_kwargs, **static_kwargs)

    jax.eval_shape(traced, dyn_args, dyn_kwargs, variables)
    positions = [position for position in found.values() if position is not None]
    if not positions:
        raise PositionError(f"discover_positions: no Dense, norm or block calls were seen in {type(model).__name__}")
    return positions


def position_table(positions: list[Position]) -> dict[str, Position]:
    """Positions by name; raises on two positions with one name."""
    table: dict[str, Position] = {}
    for position in positions:
        if position.name in table:
            raise PositionError(f"two positions are named {position.name!r}")
        table[position.name] = position
    return table


_LIST_ITEM = re.compile(r"^(?P<name>.+)_(?P<index>\d+)$")
HF_LIST_NAMES: tuple[str, ...] = ("block", "layer")
# Names a Flax position has under another name in Hugging Face: T5's tied output projection.
_HF_ALIASES: dict[str, str] = {"shared@attend": "lm_head"}


def hf_module_name(name: str, list_names: tuple[str, ...] = HF_LIST_NAMES) -> str:
    """Hugging Face dotted module name of a position name: '.../block_3/layer_1/x' -> '....block.3.layer.1.x'.

    Only components named ``<list_name>_<i>`` with list_name in ``list_names`` are list items
    (so 'wi_0' stays 'wi_0'); 'shared@attend' (T5's tied output projection) is 'lm_head'.
    """
    if name in _HF_ALIASES:
        return _HF_ALIASES[name]
    parts = []
    for part in name.split("/"):
        match = _LIST_ITEM.match(part)
        if match and match["name"] in list_names:
            parts.append(f"{match['name']}.{match['index']}")
        else:
            parts.append(part)
    return ".".join(parts)
