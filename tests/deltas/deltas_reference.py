"""Independent NumPy references for the delta tests: a small custom Flax model (its own block
names, nn.Dense with and without bias, nn.LayerNorm, nn.RMSNorm) with a float64 NumPy twin, the
hand-written contributions of every delta type (reference section 1.3); plus random weights
that need no XLA compile (compiles dominate the run time of these tests on CPU)."""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.deltas import init_delta, make_candidate, position_table


def random_like(shapes, seed=0, scale=0.5):
    """A pytree of N(0, scale^2) float32 arrays with the shapes of ``shapes`` (no XLA compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes)


def random_delta(candidates, seed=0, scale=0.5):
    """Delta weights for ``candidates`` with every entry random (so zero-initialised deltas act too)."""
    return random_like(jax.eval_shape(lambda: init_delta(jax.random.key(0), candidates)), seed, scale)


def random_model_params(shapes, seed=0):
    """Backbone params for a params-shape pytree: kernels N(0, 1/fan_in), scales 1 + N(0, 0.01),
    everything else N(0, 0.25); non-trivial norm scales and biases make folding into them visible."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        name = path[-1].key
        if name in ("scale", "gamma"):
            value = 1.0 + 0.1 * rng.normal(size=s.shape)
        elif name == "kernel":
            value = rng.normal(size=s.shape) / np.sqrt(s.shape[0])
        else:
            value = 0.5 * rng.normal(size=s.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


def make_candidates(positions, specs):
    """Candidates 0..k-1 from (position name, delta type, kwargs) triples."""
    table = position_table(positions)
    return [make_candidate(i, table[name], delta_type, kwargs) for i, (name, delta_type, kwargs) in enumerate(specs)]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """Hugging Face's gelu_new."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def normalise(x: np.ndarray, kind: str, eps: float) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True) if kind == "layernorm" else x
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)


def contribution(delta_type: str, p: dict, x: np.ndarray, y: np.ndarray, kwargs: dict, norm: tuple[str, float] | None = None) -> np.ndarray:
    """Delta_i for module input x and (parallel-augmented) output y, written from the reference's formulas."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if delta_type == "lora":
        return x @ p["A"] @ p["B"] * kwargs.get("alpha", 16) / kwargs.get("r", 1)
    if delta_type == "bitfit":
        return np.broadcast_to(p["b"], y.shape)
    if delta_type == "lnfit":
        return p["s"] * normalise(x, *norm)
    if delta_type == "low_rank_adapter":
        down = gelu_tanh(y @ (p["down_left"] @ p["down_right"]) + p["down_bias"])
        return down @ (p["up_left"] @ p["up_right"]) + p["up_bias"]
    source = y if delta_type == "adapter" else x
    return gelu_tanh(source @ p["down_kernel"] + p["down_bias"]) @ p["up_kernel"] + p["up_bias"]


class Mixer(nn.Module):
    """norm -> up (Dense with bias) -> relu -> down (Dense without bias). [.., 4] -> [.., 4]."""

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        h = nn.relu(nn.Dense(8, name="up")(h))
        h = nn.Dropout(0.5, deterministic=True)(h)
        return nn.Dense(4, use_bias=False, name="down")(h)


class TinyNet(nn.Module):
    """embed -> x + mixer_0(x) -> x + mixer_1(x) -> final (RMSNorm) -> head. [.., 3] -> [.., 5]."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="embed")(x)
        for i in range(2):
            x = x + Mixer(name=f"mixer_{i}")(x)
        x = nn.RMSNorm(epsilon=1e-6, name="final")(x)
        return nn.Dense(5, name="head")(x)


Modifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


def numpy_tinynet(params, x: np.ndarray, modify: dict[str, Modifier] | None = None) -> np.ndarray:
    """TinyNet in float64 NumPy. ``modify[name](x_in, y) -> y'`` replaces the output of a module."""
    modify = modify or {}
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def call(name, x_in, y):
        return modify[name](x_in, y) if name in modify else y

    def dense(name, node, h):
        y = h @ node["kernel"] + node.get("bias", 0.0)
        return call(name, h, y)

    def layer_norm(name, node, h, eps):
        mean = h.mean(-1, keepdims=True)
        normed = (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + eps)
        return call(name, h, normed * node["scale"] + node["bias"])

    def rms_norm(name, node, h, eps):
        return call(name, h, h / np.sqrt((h**2).mean(-1, keepdims=True) + eps) * node["scale"])

    h = dense("embed", p["embed"], np.asarray(x, np.float64))
    for i in range(2):
        name, node = f"mixer_{i}", p[f"mixer_{i}"]
        inner = layer_norm(f"{name}/norm", node["norm"], h, 1e-5)
        inner = np.maximum(dense(f"{name}/up", node["up"], inner), 0.0)
        inner = dense(f"{name}/down", node["down"], inner)
        h = h + call(name, h, inner)
    h = rms_norm("final", p["final"], h, 1e-6)
    return dense("head", p["head"], h)


class GammaNorm(nn.Module):
    """A user's mean-centred norm with its own names: gamma * (x - mean) / sqrt(var + eps) + beta."""

    eps: float = 0.1

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.normal(1.0), (x.shape[-1],))
        beta = self.param("beta", nn.initializers.normal(1.0), (x.shape[-1],))
        centred = x - x.mean(-1, keepdims=True)
        return gamma * centred * jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + self.eps) + beta


class GammaNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(GammaNorm(name="gn")(nn.Dense(6, name="inp")(x)))
