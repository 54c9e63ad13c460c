"""Shared fixtures for the delta tests: t5-large shapes, a tiny random T5, and the small custom
Flax model of deltas_reference.py with random weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltas_reference import GammaNet, GammaNorm, TinyNet, random_model_params

from s3delta_jax.deltas import discover_positions, register_norm
from s3delta_jax.models import t5

IDS = jax.ShapeDtypeStruct((1, 1), jnp.int32)


@pytest.fixture(scope="session")
def t5_large_positions():
    """Positions of t5-large with the vocabulary resized to 32100 (shapes only)."""
    config = t5.get_config("t5-large", vocab_size=32100)
    return discover_positions(t5.T5ForConditionalGeneration(config), IDS, IDS, IDS, IDS)


TINY_T5 = t5.T5Config(
    vocab_size=40, d_model=64, d_kv=8, d_ff=96, num_layers=1, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
)


@dataclasses.dataclass
class TinyT5:
    config: t5.T5Config
    model: t5.T5ForConditionalGeneration
    params: dict
    positions: list
    batch: dict[str, np.ndarray]

    def logits(self, apply_fn, params=None):
        b = self.batch
        return apply_fn({"params": self.params if params is None else params},
                        b["input_ids"], b["attention_mask"], b["decoder_input_ids"])


@pytest.fixture(scope="session")
def tiny_t5() -> TinyT5:
    model = t5.T5ForConditionalGeneration(TINY_T5)
    params = random_model_params(t5.param_shapes(TINY_T5))
    positions = discover_positions(model, IDS, IDS, IDS, IDS)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(2, TINY_T5.vocab_size, (2, 7)).astype(np.int32),
        "attention_mask": np.array([[1] * 7, [1] * 5 + [0] * 2], np.int32),
        "decoder_input_ids": rng.integers(2, TINY_T5.vocab_size, (2, 5)).astype(np.int32),
    }
    return TinyT5(TINY_T5, model, params, positions, batch)


@dataclasses.dataclass
class TinyNetSetup:
    model: TinyNet
    params: dict
    x: np.ndarray
    positions: list


@pytest.fixture(scope="session")
def tinynet() -> TinyNetSetup:
    model = TinyNet()
    x = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32)
    params = random_model_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], seed=3)
    positions = discover_positions(model, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    return TinyNetSetup(model, params, x, positions)


@pytest.fixture(scope="session")
def gammanet():
    """GammaNet with GammaNorm registered as a mean-centred norm: (model, params, x, positions)."""
    register_norm(GammaNorm, "layernorm", epsilon_attr="eps", scale_param="gamma", bias_param="beta")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    params = random_model_params(jax.eval_shape(GammaNet().init, jax.random.key(0), x)["params"], seed=1)
    return GammaNet(), params, x, discover_positions(GammaNet(), x)
