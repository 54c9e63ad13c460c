"""Delta module types: parameter counts, initialisation and the contribution each one adds.

Every type follows reference section 1.3 (thunlp/S3Delta, NAS_global/delta_layers.py). A delta
at a position with input x [..., in] and frozen output y [..., out] adds a contribution of y's
shape; the gate z (if any) multiplies only that contribution:

* ``parallel`` slot: contribution Delta(x) computed from the module input.
* ``sequential`` slot: contribution Delta(out) computed from the parallel-augmented output.

Types (snake_case name -> reference name):

* ``lora`` (Lora): x A B * alpha / r; A [in, r] ~ U(+-1/sqrt(in)) (torch's kaiming_uniform(a=sqrt(5))),
  B [r, out] = 0. |delta| = r (in + out).
* ``bitfit`` (BitFitParallel): constant bias b [out] = 0. |delta| = out.
* ``lnfit`` (LNFit): s [size] * normalise(x), with the norm's own normalisation in float32
  (RMS for T5, mean-centred for LayerNorm) and eps. s = 0 at init. |delta| = size.
* ``low_rank_adapter`` (LowRankAdapter, Compacter's low-rank adapter): U(gelu_tanh(D(h))) with
  D = h (L_d R_d) + b_d: d -> d // reduction and U likewise back to d; every factor Xavier-uniform
  with gain sqrt(2) (torch fans), biases 0; not zero at init. |delta| = 2 rank (d + m) + m + d.
* ``adapter`` (Adapter, Houlsby): up(gelu_tanh(down(h))), d -> bottleneck -> d, weights N(0, 0.01),
  biases 0 (as the reference's AdapterSequentialLayer). |delta| = 2 d b + b + d.
* ``parallel_adapter`` (He et al. 2022; no reference name): the same bottleneck MLP on the module
  input, in -> bottleneck -> out, same init. |delta| = in b + b + b out + out.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from s3delta_jax.deltas.positions import CALL, POSITION_KINDS, Position
from s3delta_jax.errors import UserError

Slot = Literal["parallel", "sequential"]
Params = dict[str, jax.Array]


class DeltaTypeError(UserError, ValueError):
    """An unknown delta type, a bad keyword argument, or a delta placed where it cannot act."""


class DeltaType(abc.ABC):
    """One kind of delta module. Subclasses set the class attributes and implement num_params, init and apply.

    Attributes:
      name: snake_case registry name.
      reference_name: the reference implementation's DeltaType name, None if it has none.
      slot: 'parallel' (sees the module input) or 'sequential' (sees the module output).
      kinds: position kinds it can act on.
      defaults: every keyword argument with its default.
      reference_kwargs: our keyword -> the reference config's keyword.
      reference_defaults: the reference config's default for each of those keywords (used on
        import when a keyword is absent: the reference's Lora defaults to lora_r = 8).
      reference_fixed: reference keywords we accept only with this (our fixed) value.
      input_independent: the contribution does not depend on x or y (it can fold into a bias).
      gate_params: parameters the contribution is jointly linear in: scaling each of them by z scales
        the contribution by z. A soft gate multiplies these (vectors and rank-sized matrices) rather
        than the contribution, which is as large as the activations [batch, length, out]; () (the
        default, for types that are not linear in any parameter) gates the contribution.
    """

    name: str = ""
    reference_name: str | None = None
    slot: Slot = "parallel"
    kinds: frozenset[str] = frozenset(POSITION_KINDS)
    defaults: Mapping[str, Any] = {}
    reference_kwargs: Mapping[str, str] = {}
    reference_defaults: Mapping[str, Any] = {}
    reference_fixed: Mapping[str, Any] = {}
    input_independent: bool = False
    gate_params: tuple[str, ...] = ()

    def resolve(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """kwargs with defaults filled in; raises DeltaTypeError on an unknown or invalid one."""
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise DeltaTypeError(f"{self.name}: unknown argument(s) {unknown}; allowed: {allowed}")
        resolved = {**self.defaults, **kwargs}
        for key, value in resolved.items():
            wanted = int if isinstance(self.defaults[key], int) else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted) or value <= 0:
                kind = "integer" if wanted is int else "number"
                raise DeltaTypeError(f"{self.name}: {key} must be a positive {kind}, got {value!r}")
        return resolved

    def to_reference_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Our kwargs in the reference config's names (all of them, defaults included)."""
        return {self.reference_kwargs[key]: value for key, value in self.resolve(kwargs).items()}

    def from_reference_kwargs(self, reference_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Reference config kwargs -> our resolved kwargs; raises DeltaTypeError on ones we lack."""
        ours = {theirs: key for key, theirs in self.reference_kwargs.items()}
        for name, value in reference_kwargs.items():
            if name in self.reference_fixed and value != self.reference_fixed[name]:
                raise DeltaTypeError(f"{self.reference_name}: {name}={value!r} is not supported (only {self.reference_fixed[name]!r})")
            if name not in ours and name not in self.reference_fixed:
                raise DeltaTypeError(f"{self.reference_name}: unknown argument {name!r}")
        merged = {**self.reference_defaults, **reference_kwargs}
        return self.resolve({key: merged[theirs] for theirs, key in ours.items()})

    def check_position(self, position: Position) -> None:
        """Raises DeltaTypeError if this type cannot act at ``position``."""
        if position.kind not in self.kinds:
            raise DeltaTypeError(
                f"{self.name} cannot act on the {position.kind} position {position.name} "
                f"(it acts on: {', '.join(sorted(self.kinds))})"
            )

    @abc.abstractmethod
    def num_params(self, position: Position, **kwargs: Any) -> int:
        """|delta|: trainable parameters at this position."""
        raise NotImplementedError

    @abc.abstractmethod
    def init(self, key: jax.Array, position: Position, **kwargs: Any) -> Params:
        """Fresh float32 parameters (the reference's initialisation)."""
        raise NotImplementedError

    @abc.abstractmethod
    def apply(self, params: Params, x: jax.Array, y: jax.Array, position: Position, **kwargs: Any) -> jax.Array:
        """The contribution (ungated) for module input x [..., in] and output y [..., out]; y's shape.

        For a sequential type, ``y`` is the parallel-augmented output it acts on.
        """
        raise NotImplementedError

    def fold(self, module_params: Mapping[str, jax.Array], params: Params, position: Position, **kwargs: Any) -> dict[str, jax.Array] | None:
        """The backbone module's parameters with this delta merged in, or None if it cannot be."""
        return None


def rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] @ w [in, out] -> [..., out], as one matmul of x flattened to [rows, in].

    A single contracting dimension keeps the backward's weight gradient (rows^T @ g) a plain 2-D
    matmul: on x [batch, length, in] XLA:CPU made a transposed copy of x or of g for each one
    (measured 2026-12-07: a t5-small pass with every LoRA candidate gated went from 1.52x to 1.19x a
    re-training pass, benchmarks/README.md).
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


class LoRA(DeltaType):
    name = "lora"
    reference_name = "Lora"
    slot = "parallel"
    kinds = frozenset({"linear"})
    defaults = {"r": 1, "alpha": 16.0}
    reference_kwargs = {"r": "lora_r", "alpha": "lora_alpha"}
    reference_defaults = {"lora_r": 8, "lora_alpha": 16}
    reference_fixed = {"lora_dropout": 0.0}
    gate_params = ("B",)

    def num_params(self, position, **kwargs):
        r = self.resolve(kwargs)["r"]
        return r * (position.in_features + position.out_features)

    def init(self, key, position, **kwargs):
        r = self.resolve(kwargs)["r"]
        bound = 1.0 / math.sqrt(position.in_features)
        a = jax.random.uniform(key, (position.in_features, r), jnp.float32, -bound, bound)
        return {"A": a, "B": jnp.zeros((r, position.out_features), jnp.float32)}

    def apply(self, params, x, y, position, **kwargs):
        kw = self.resolve(kwargs)
        return rows_matmul(rows_matmul(x, params["A"]), params["B"] * (kw["alpha"] / kw["r"]))

    def fold(self, module_params, params, position, **kwargs):
        kernel = module_params.get("kernel")
        shape = (position.in_features, position.out_features)
        if position.method != CALL or kernel is None or kernel.shape != shape:
            return None
        kw = self.resolve(kwargs)
        update = params["A"] @ params["B"] * (kw["alpha"] / kw["r"])
        return {**module_params, "kernel": (kernel + update).astype(kernel.dtype)}


class BitFit(DeltaType):
    name = "bitfit"
    reference_name = "BitFitParallel"
    slot = "sequential"
    kinds = frozenset({"linear", "norm"})
    input_independent = True
    gate_params = ("b",)

    def num_params(self, position, **kwargs):
        self.resolve(kwargs)
        return position.out_features

    def init(self, key, position, **kwargs):
        return {"b": jnp.zeros((position.out_features,), jnp.float32)}

    def apply(self, params, x, y, position, **kwargs):
        return jnp.broadcast_to(params["b"], y.shape)

    def fold(self, module_params, params, position, **kwargs):
        name = position.bias_param
        if position.method != CALL or name is None or name not in module_params:
            return None
        bias = module_params[name]
        return {**module_params, name: (bias + params["b"]).astype(bias.dtype)}


def normalise(x: jax.Array, position: Position) -> jax.Array:
    """The norm's own normalisation of x [..., size] in float32 (no scale, no bias)."""
    x32 = x.astype(jnp.float32)
    if position.norm_kind == "layernorm":
        x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return x32 * jax.lax.rsqrt(variance + position.epsilon)


class LNFit(DeltaType):
    name = "lnfit"
    reference_name = "LNFit"
    slot = "parallel"
    kinds = frozenset({"norm"})
    gate_params = ("s",)

    def num_params(self, position, **kwargs):
        self.resolve(kwargs)
        return position.out_features

    def init(self, key, position, **kwargs):
        return {"s": jnp.zeros((position.out_features,), jnp.float32)}

    def apply(self, params, x, y, position, **kwargs):
        return params["s"] * normalise(x, position)

    def fold(self, module_params, params, position, **kwargs):
        name = position.scale_param
        if name is None or name not in module_params:
            return None
        scale = module_params[name]
        return {**module_params, name: (scale + params["s"]).astype(scale.dtype)}


def _xavier_uniform(key: jax.Array, shape: tuple[int, int], gain: float) -> jax.Array:
    """torch.nn.init.xavier_uniform_ on a [rows, cols] tensor: U(+-gain sqrt(6 / (rows + cols)))."""
    bound = gain * math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class LowRankAdapter(DeltaType):
    name = "low_rank_adapter"
    reference_name = "LowRankAdapter"
    slot = "sequential"
    defaults = {"reduction": 32, "rank": 1}
    reference_kwargs = {"reduction": "reduction_factor", "rank": "low_rank_rank"}
    reference_defaults = {"reduction_factor": 32, "low_rank_rank": 1}
    reference_fixed = {"non_linearity": "gelu_new", "low_rank_w_init": "glorot-uniform"}
    gate_params = ("up_right", "up_bias")

    def _sizes(self, position: Position, kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
        kw = self.resolve(kwargs)
        d = position.out_features
        m = d // kw["reduction"]
        if m < 1:
            raise DeltaTypeError(f"{self.name}: reduction {kw['reduction']} leaves no hidden unit at {position.name} (size {d})")
        return d, m, kw["rank"]

    def num_params(self, position, **kwargs):
        d, m, rank = self._sizes(position, kwargs)
        return 2 * rank * (d + m) + m + d

    def init(self, key, position, **kwargs):
        d, m, rank = self._sizes(position, kwargs)
        k = jax.random.split(key, 4)
        gain = math.sqrt(2.0)
        return {
            "down_left": _xavier_uniform(k[0], (d, rank), gain),
            "down_right": _xavier_uniform(k[1], (rank, m), gain),
            "down_bias": jnp.zeros((m,), jnp.float32),
            "up_left": _xavier_uniform(k[2], (m, rank), gain),
            "up_right": _xavier_uniform(k[3], (rank, d), gain),
            "up_bias": jnp.zeros((d,), jnp.float32),
        }

    def apply(self, params, x, y, position, **kwargs):
        down = params["down_left"] @ params["down_right"]
        up = params["up_left"] @ params["up_right"]
        h = jax.nn.gelu(rows_matmul(y, down) + params["down_bias"], approximate=True)
        return rows_matmul(h, up) + params["up_bias"]


def _bottleneck_init(key: jax.Array, d_in: int, d_out: int, bottleneck: int) -> Params:
    k_down, k_up = jax.random.split(key)
    return {
        "down_kernel": 0.01 * jax.random.normal(k_down, (d_in, bottleneck), jnp.float32),
        "down_bias": jnp.zeros((bottleneck,), jnp.float32),
        "up_kernel": 0.01 * jax.random.normal(k_up, (bottleneck, d_out), jnp.float32),
        "up_bias": jnp.zeros((d_out,), jnp.float32),
    }


def _bottleneck_apply(params: Params, h: jax.Array) -> jax.Array:
    hidden = jax.nn.gelu(rows_matmul(h, params["down_kernel"]) + params["down_bias"], approximate=True)
    return rows_matmul(hidden, params["up_kernel"]) + params["up_bias"]


class Adapter(DeltaType):
    name = "adapter"
    reference_name = "Adapter"
    slot = "sequential"
    defaults = {"bottleneck": 24}
    reference_kwargs = {"bottleneck": "bottleneck_dim"}
    reference_defaults = {"bottleneck_dim": 24}
    reference_fixed = {"non_linearity": "gelu_new", "sequential": True}
    gate_params = ("up_kernel", "up_bias")

    def num_params(self, position, **kwargs):
        b = self.resolve(kwargs)["bottleneck"]
        d = position.out_features
        return 2 * d * b + b + d

    def init(self, key, position, **kwargs):
        b = self.resolve(kwargs)["bottleneck"]
        return _bottleneck_init(key, position.out_features, position.out_features, b)

    def apply(self, params, x, y, position, **kwargs):
        return _bottleneck_apply(params, y)


class ParallelAdapter(DeltaType):
    name = "parallel_adapter"
    slot = "parallel"
    defaults = {"bottleneck": 24}
    gate_params = ("up_kernel", "up_bias")

    def num_params(self, position, **kwargs):
        b = self.resolve(kwargs)["bottleneck"]
        return position.in_features * b + b + b * position.out_features + position.out_features

    def init(self, key, position, **kwargs):
        b = self.resolve(kwargs)["bottleneck"]
        return _bottleneck_init(key, position.in_features, position.out_features, b)

    def apply(self, params, x, y, position, **kwargs):
        return _bottleneck_apply(params, x)


DELTA_TYPES: dict[str, DeltaType] = {}


def register_delta_type(delta_type: DeltaType) -> None:
    """Adds a DeltaType instance to the registry under ``delta_type.name``."""
    if not delta_type.name or delta_type.name in DELTA_TYPES:
        raise DeltaTypeError(f"cannot register delta type {delta_type.name!r}: empty or already registered")
    if delta_type.slot not in ("parallel", "sequential"):
        raise DeltaTypeError(f"delta type {delta_type.name}: slot must be 'parallel' or 'sequential'")
    DELTA_TYPES[delta_type.name] = delta_type


def get_delta_type(name: str) -> DeltaType:
    """The registered DeltaType called ``name``."""
    try:
        return DELTA_TYPES[name]
    except KeyError:
        raise DeltaTypeError(f"unknown delta type {name!r}; known: {', '.join(DELTA_TYPES)}") from None


def delta_type_for_reference(reference_name: str) -> DeltaType:
    """The DeltaType whose reference-implementation name is ``reference_name`` (e.g. 'Lora')."""
    for delta_type in DELTA_TYPES.values():
        if delta_type.reference_name == reference_name:
            return delta_type
    known = [t.reference_name for t in DELTA_TYPES.values() if t.reference_name]
    raise DeltaTypeError(f"unknown reference delta type {reference_name!r}; known: {', '.join(known)}")


for _delta_type in (LoRA(), BitFit(), LNFit(), LowRankAdapter(), Adapter(), ParallelAdapter()):
    register_delta_type(_delta_type)
