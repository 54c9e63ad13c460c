"""Delta types: sizes, initialisation and contributions against hand-written NumPy (reference 1.3)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from deltas_reference import contribution, normalise

from s3delta_jax.deltas import DELTA_TYPES, DeltaTypeError, Position, delta_param_count, delta_type_for_reference, get_delta_type

LINEAR = Position(("enc", "q"), "linear", 1024, 4096, "Dense")
BLOCK = Position(("enc", "SelfAttention"), "block", 1024, 1024, "T5Attention")
RMS = Position(("enc", "layer_norm"), "norm", 1024, 1024, "T5LayerNorm", norm_kind="rms", epsilon=1e-6)


@pytest.mark.parametrize(
    "name, kwargs, position, expected",
    [
        ("lora", {}, LINEAR, 1 * (1024 + 4096)),
        ("lora", {"r": 8}, Position(("q",), "linear", 1024, 1024, "Dense"), 16384),
        ("bitfit", {}, LINEAR, 4096),
        ("bitfit", {}, RMS, 1024),
        ("lnfit", {}, RMS, 1024),
        ("low_rank_adapter", {}, BLOCK, 3168),  # 2 (1024 + 32) + 32 + 1024
        ("adapter", {}, BLOCK, 50200),  # 1024 * 24 + 24 + 24 * 1024 + 1024
        ("parallel_adapter", {"bottleneck": 4}, LINEAR, 1024 * 4 + 4 + 4 * 4096 + 4096),
    ],
)
def test_sizes_match_the_formulas_and_the_initialised_parameters(name, kwargs, position, expected):
    delta_type = get_delta_type(name)
    assert delta_type.num_params(position, **kwargs) == expected
    assert delta_param_count(jax.eval_shape(lambda: delta_type.init(jax.random.key(0), position, **kwargs))) == expected


def test_initialisation_matches_the_reference():
    key = jax.random.key(0)
    lora = get_delta_type("lora").init(key, LINEAR)
    bound = 1 / math.sqrt(1024)  # kaiming_uniform(a=sqrt(5)) on torch's [r, in]
    assert lora["A"].shape == (1024, 1) and lora["B"].shape == (1, 4096)
    assert 0.95 * bound < np.abs(lora["A"]).max() <= bound and not np.any(lora["B"])
    lra = get_delta_type("low_rank_adapter").init(key, BLOCK)
    big, small = math.sqrt(2) * math.sqrt(6 / 1025), math.sqrt(2) * math.sqrt(6 / 33)  # 0.108, 0.603
    for name, limit in (("down_left", big), ("up_right", big), ("down_right", small), ("up_left", small)):
        assert 0.8 * limit < np.abs(lra[name]).max() <= limit, name
    assert not np.any(lra["down_bias"]) and not np.any(lra["up_bias"])
    adapter = get_delta_type("adapter").init(key, BLOCK)
    assert abs(float(np.std(adapter["down_kernel"])) - 0.01) < 0.001 and not np.any(adapter["up_bias"])
    assert not np.any(get_delta_type("bitfit").init(key, LINEAR)["b"])
    assert not np.any(get_delta_type("lnfit").init(key, RMS)["s"])


SMALL_LINEAR = Position(("up",), "linear", 6, 5, "Dense")
SMALL_BLOCK = Position(("blk",), "block", 64, 64, "Blk")


@pytest.mark.parametrize(
    "name, position, kwargs",
    [
        ("lora", SMALL_LINEAR, {"r": 2, "alpha": 4}),
        ("bitfit", SMALL_LINEAR, {}),
        ("low_rank_adapter", SMALL_BLOCK, {"reduction": 8, "rank": 2}),
        ("adapter", SMALL_BLOCK, {"bottleneck": 3}),
        ("parallel_adapter", SMALL_LINEAR, {"bottleneck": 3}),
    ],
)
@pytest.mark.parametrize("leading", [(2, 3), (5,), (2, 2, 3)])  # [batch, length], [tokens], [batch, heads, length]
def test_contributions_against_numpy(name, position, kwargs, leading):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(*leading, position.in_features)).astype(np.float32)
    y = rng.normal(size=(*leading, position.out_features)).astype(np.float32)
    shapes = jax.eval_shape(lambda: get_delta_type(name).init(jax.random.key(0), position, **kwargs))
    params = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in shapes.items()}
    got = get_delta_type(name).apply(params, x, y, position, **kwargs)
    assert got.shape == y.shape
    np.testing.assert_allclose(got, contribution(name, params, x, y, kwargs), rtol=1e-4, atol=1e-4)


SMALL_NORM = Position(("ln",), "norm", 6, 6, "N", norm_kind="rms", epsilon=1e-6)


@pytest.mark.parametrize("name, position, kwargs", [
    ("lora", SMALL_LINEAR, {"r": 2, "alpha": 4}),
    ("bitfit", SMALL_LINEAR, {}),
    ("lnfit", SMALL_NORM, {}),
    ("low_rank_adapter", SMALL_BLOCK, {"reduction": 8, "rank": 2}),
    ("adapter", SMALL_BLOCK, {"bottleneck": 3}),
    ("parallel_adapter", SMALL_LINEAR, {"bottleneck": 3}),
])
def test_scaling_the_gate_params_by_z_scales_the_numpy_contribution_by_z(name, position, kwargs):
    """What with_deltas relies on when it gates the parameters instead of the contribution."""
    delta_type = get_delta_type(name)
    assert delta_type.gate_params, f"{name} gates its full contribution"
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, position.in_features))
    y = rng.normal(size=(2, 3, position.out_features))
    shapes = jax.eval_shape(lambda: delta_type.init(jax.random.key(0), position, **kwargs))
    params = {k: rng.normal(size=v.shape) for k, v in shapes.items()}
    z = 0.37
    scaled = {k: z * v if k in delta_type.gate_params else v for k, v in params.items()}
    np.testing.assert_allclose(contribution(name, scaled, x, y, kwargs, norm=("rms", 1e-6)),
                               z * contribution(name, params, x, y, kwargs, norm=("rms", 1e-6)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm_kind", ["rms", "layernorm"])
def test_lnfit_uses_the_norms_own_normalisation(norm_kind):
    position = Position(("ln",), "norm", 8, 8, "N", norm_kind=norm_kind, epsilon=0.5)
    x = (np.random.default_rng(2).normal(size=(3, 8)) + 2.0).astype(np.float32)
    s = np.linspace(-1, 1, 8).astype(np.float32)
    got = get_delta_type("lnfit").apply({"s": s}, x, x, position)
    np.testing.assert_allclose(got, s * normalise(x, norm_kind, 0.5), rtol=1e-5, atol=1e-6)


def test_bad_arguments_and_positions_are_one_line_errors():
    with pytest.raises(DeltaTypeError, match=r"lora: unknown argument\(s\) \['rank'\]; allowed: r, alpha"):
        get_delta_type("lora").num_params(LINEAR, rank=2)
    with pytest.raises(DeltaTypeError, match="r must be a positive integer"):
        get_delta_type("lora").num_params(LINEAR, r=0)
    with pytest.raises(DeltaTypeError, match="lora cannot act on the norm position enc/layer_norm"):
        get_delta_type("lora").check_position(RMS)
    with pytest.raises(DeltaTypeError, match="reduction 2048 leaves no hidden unit"):
        get_delta_type("low_rank_adapter").num_params(BLOCK, reduction=2048)
    with pytest.raises(DeltaTypeError, match="unknown delta type 'prefix'"):
        get_delta_type("prefix")


def test_reference_names_and_kwargs():
    assert {t.reference_name: name for name, t in DELTA_TYPES.items() if t.reference_name} == {
        "Lora": "lora", "BitFitParallel": "bitfit", "LNFit": "lnfit", "LowRankAdapter": "low_rank_adapter", "Adapter": "adapter",
    }
    lora = delta_type_for_reference("Lora")
    assert lora.from_reference_kwargs({}) == {"r": 8, "alpha": 16}  # the reference's LoraConfig defaults
    assert lora.from_reference_kwargs({"lora_r": 1, "lora_dropout": 0.0}) == {"r": 1, "alpha": 16}
    assert lora.to_reference_kwargs({"r": 1}) == {"lora_r": 1, "lora_alpha": 16.0}
    with pytest.raises(DeltaTypeError, match="lora_dropout=0.1 is not supported"):
        lora.from_reference_kwargs({"lora_dropout": 0.1})
    lra = delta_type_for_reference("LowRankAdapter")
    assert lra.from_reference_kwargs({"non_linearity": "gelu_new"}) == {"reduction": 32, "rank": 1}
    with pytest.raises(DeltaTypeError, match="unknown argument 'scaling'"):
        lra.from_reference_kwargs({"scaling": 2})
