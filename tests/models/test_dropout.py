"""The hashed dropout (models/dropout.py): Bernoulli statistics, independence, the nn.Dropout contract,
and masks that do not depend on how the array is sharded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3delta_jax.models import dropout

N = 1 << 20  # elements per statistical check: binomial sd of a fraction <= 0.0005


def sigma(p: float, n: int = N) -> float:
    return float(np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_elements_are_kept_with_probability_one_minus_rate(rate):
    keep = np.asarray(dropout.keep_mask(jax.random.key(3), (N,), rate))
    assert abs(keep.mean() - (1 - rate)) < 5 * sigma(rate)


def test_every_bit_is_a_fair_coin_and_keys_give_unrelated_bits():
    bits = np.asarray(dropout.hash_bits(jax.random.key(0), (N,)))
    other = np.asarray(dropout.hash_bits(jax.random.key(1), (N,)))
    ones = (bits[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.abs(ones.mean(axis=0) - 0.5).max() < 5 * sigma(0.5)
    same = (((bits ^ other)[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
    assert np.abs(same - 0.5).max() < 5 * sigma(0.5)  # two keys agree on a bit half of the time


def test_neighbours_rows_and_columns_are_independent():
    rate, shape = 0.1, (1024, 1024)
    keep = np.asarray(dropout.keep_mask(jax.random.key(7), shape, rate))
    both = (keep[:, :-1] & keep[:, 1:]).mean()  # horizontal neighbours
    assert abs(both - (1 - rate) ** 2) < 5 * sigma((1 - rate) ** 2)
    both = (keep[:-1] & keep[1:]).mean()  # vertical neighbours
    assert abs(both - (1 - rate) ** 2) < 5 * sigma((1 - rate) ** 2)
    for counts in (keep.sum(axis=0), keep.sum(axis=1)):  # no striped column or row
        z = (counts - shape[0] * (1 - rate)) / np.sqrt(shape[0] * rate * (1 - rate))
        assert np.abs(z).max() < 5.5 and abs(z.std() - 1) < 0.1


def apply(layer: nn.Module, x, key, deterministic=False):
    return layer.apply({}, x, deterministic=deterministic, rngs={"dropout": key})


def test_kept_values_are_scaled_dropped_ones_are_zero_and_the_gradient_is_the_mask():
    rate, x = 0.25, jnp.arange(1.0, 4097.0).reshape(64, 64)
    layer = dropout.Dropout(rate)
    y = np.asarray(apply(layer, x, jax.random.key(0)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    grad = jax.grad(lambda x: apply(layer, x, jax.random.key(0)).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), kept / (1 - rate), rtol=1e-6)
    assert 0.70 < kept.mean() < 0.80


def test_a_key_fixes_the_mask_and_another_key_changes_it():
    layer, x = dropout.Dropout(0.5), jnp.ones((32, 32))
    first, again, other = (np.asarray(apply(layer, x, jax.random.key(seed))) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert (first != other).mean() > 0.4


def test_deterministic_rate_zero_and_broadcast_dims_follow_nn_dropout():
    x = jnp.ones((8, 16, 4), jnp.bfloat16)
    assert apply(dropout.Dropout(0.5), x, jax.random.key(0), deterministic=True) is x
    assert apply(dropout.Dropout(0.0), x, jax.random.key(0)) is x
    y = np.asarray(apply(dropout.Dropout(0.5, broadcast_dims=(0, -1)), x, jax.random.key(0)), np.float32)
    assert y.dtype == np.float32 and (y == y[:1, :, :1]).all()  # one mask over dims 0 and -1
    assert 0 < (y[0, :, 0] == 0).sum() < 16
    assert isinstance(dropout.Dropout(0.1), nn.Dropout)  # found wherever an nn.Dropout is looked for


def test_two_calls_of_one_module_draw_different_masks():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            layer = dropout.Dropout(0.5)
            return layer(x, deterministic=False), layer(x, deterministic=False)

    first, second = Twice().apply({}, jnp.ones((64, 64)), rngs={"dropout": jax.random.key(0)})
    assert (np.asarray(first) != np.asarray(second)).mean() > 0.4


def test_the_mask_does_not_depend_on_the_sharding(subprocess_env):
    """The same key and shape give the same mask on one device and split over 8 (fake) devices."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from s3delta_jax.models.dropout import keep_mask
        assert jax.device_count() == 8
        mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
        shape, key = (16, 6, 8), jax.random.key(5)
        one = np.asarray(jax.jit(lambda k: keep_mask(k, shape, 0.3))(key))
        for spec in (P("a", "b"), P(None, "b", "a"), P(("a", "b"))):
            split = jax.jit(lambda k: keep_mask(k, shape, 0.3), out_shardings=NamedSharding(mesh, spec))(key)
            assert len(split.addressable_shards) == 8
            np.testing.assert_array_equal(np.asarray(split), one)
        print("same", one.mean())
    """)
    env = dict(subprocess_env, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {subprocess_env['XLA_FLAGS']}")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("same")
