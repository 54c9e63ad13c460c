"""Hugging Face checkpoint formats -> Flax params, the inverse, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from t5_reference import TINY, hf_forward

from s3delta_jax.models import t5
from s3delta_jax.models import checkpoint_files
from s3delta_jax.models.t5 import convert
from s3delta_jax.hub import HubUnavailableError


def _assert_same_params(actual, expected):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    jax.tree_util.tree_map(np.testing.assert_array_equal, actual, expected)


def _one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module")
def reference(hf_checkpoint):
    """(config, params) loaded from the plain model.safetensors checkpoint."""
    return convert.load_checkpoint(str(hf_checkpoint.directory))


def test_sharded_safetensors_and_pytorch_bin_load_the_same_params(hf_checkpoint, reference, tmp_path):
    sharded = tmp_path / "sharded"
    hf_checkpoint.model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / checkpoint_files.SAFETENSORS_INDEX).is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    _assert_same_params(convert.load_checkpoint(str(sharded))[1], reference[1])

    pickled = tmp_path / "bin"
    pickled.mkdir()
    shutil.copy(hf_checkpoint.directory / checkpoint_files.CONFIG_FILE, pickled)
    state_dict = hf_checkpoint.model.state_dict()  # with the tied copies (embed_tokens, tied lm_head)
    assert "encoder.embed_tokens.weight" in state_dict and "lm_head.weight" in state_dict
    torch.save(state_dict, pickled / checkpoint_files.TORCH_FILE)
    _assert_same_params(convert.load_checkpoint(str(pickled))[1], reference[1])


@pytest.mark.parametrize("hf_checkpoint", ["gated_untied"], indirect=True)  # slices shared and lm_head
def test_vocab_slice(hf_checkpoint, reference, padded_batch):
    config, params = reference
    sliced_config, sliced = convert.load_checkpoint(str(hf_checkpoint.directory), vocab_size=100)
    model = t5.T5ForConditionalGeneration(sliced_config)
    assert model.config == dataclasses.replace(config, vocab_size=100)
    assert sliced["shared"]["embedding"].shape == (100, TINY["d_model"])
    np.testing.assert_array_equal(sliced["shared"]["embedding"], params["shared"]["embedding"][:100])
    np.testing.assert_array_equal(sliced["lm_head"]["kernel"], params["lm_head"]["kernel"][:, :100])
    assert sum(x.size for x in jax.tree_util.tree_leaves(sliced)) == t5.count_params(config, vocab_size=100)

    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    for key in ("input_ids", "decoder_input_ids"):
        batch[key] = batch[key] % 100  # ids beyond the slice do not exist any more
    expected = hf_forward(hf_checkpoint.model, batch).logits.numpy()[..., :100]
    np.testing.assert_allclose(jax.jit(model.apply)({"params": sliced}, **batch), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("hf_checkpoint", ["gated_untied"], indirect=True)
def test_bfloat16_load(hf_checkpoint, reference, padded_batch):
    config, params = reference
    config16, params16 = convert.load_checkpoint(str(hf_checkpoint.directory), dtype=jnp.bfloat16)
    model = t5.T5ForConditionalGeneration(config16)
    assert model.config == dataclasses.replace(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {jnp.dtype(jnp.bfloat16)}
    _assert_same_params(params16, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params))
    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    assert jax.eval_shape(model.apply, {"params": params16}, **batch).dtype == jnp.bfloat16


def test_save_checkpoint_round_trips_through_transformers(hf_checkpoint, reference, padded_batch, tmp_path):
    config, params = reference
    state_dict = convert.state_dict_from_params(params)
    for name, tensor in hf_checkpoint.model.state_dict().items():
        if name in state_dict:
            np.testing.assert_array_equal(state_dict[name], tensor.numpy())

    convert.save_checkpoint(params, config, str(tmp_path))
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = {k: v for k, v in padded_batch.items() if k != "labels"}
    np.testing.assert_array_equal(hf_forward(reloaded, batch).logits, hf_forward(hf_checkpoint.model, batch).logits)
    assert convert.load_checkpoint(str(tmp_path))[0] == config


@pytest.fixture(scope="module")
def tiny_state_dict(hf_checkpoint):
    return checkpoint_files.read_state_dict(str(hf_checkpoint.directory))


@pytest.mark.parametrize("hf_checkpoint", ["gated_untied"], indirect=True)
def test_untied_checkpoint_without_lm_head_uses_shared(reference, tiny_state_dict):
    config, _ = reference
    state_dict = {k: v for k, v in tiny_state_dict.items() if k != convert.LM_HEAD}
    params = convert.params_from_state_dict(state_dict, config)
    np.testing.assert_array_equal(params["lm_head"]["kernel"], state_dict[convert.SHARED].T)


@pytest.mark.parametrize("hf_checkpoint", ["relu_tied"], indirect=True)
def test_mismatched_state_dicts_fail_with_one_line_errors(reference, tiny_state_dict):
    config, _ = reference
    q = "encoder.block.1.layer.0.SelfAttention.q.weight"
    cases = {
        "missing": ({k: v for k, v in tiny_state_dict.items() if k != q}, [q, "missing"]),
        "unexpected": ({**tiny_state_dict, q.replace("block.1", "block.7"): 0}, ["block.7", "unexpected"]),
        "shape": ({**tiny_state_dict, q: tiny_state_dict[q][:, :5]}, [q, "shape"]),
        "other head": ({**tiny_state_dict, convert.LM_HEAD: -tiny_state_dict[convert.SHARED]}, ["tie_word_embeddings"]),
    }
    for state_dict, fragments in cases.values():
        with pytest.raises(checkpoint_files.CheckpointError) as excinfo:
            convert.params_from_state_dict(state_dict, config)
        _one_line_error(excinfo, *fragments)
    with pytest.raises(checkpoint_files.CheckpointError) as excinfo:
        convert.params_from_state_dict(tiny_state_dict, config, vocab_size=config.vocab_size + 1)
    _one_line_error(excinfo, "vocab_size")


def test_bad_directories_fail_with_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / checkpoint_files.CONFIG_FILE).write_text(json.dumps(t5.get_config("t5-small").to_hf_dict()))
    with pytest.raises(checkpoint_files.CheckpointError) as excinfo:
        convert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, "no weights", checkpoint_files.SAFETENSORS_FILE)

    (tmp_path / checkpoint_files.TORCH_FILE).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(checkpoint_files.CheckpointError) as excinfo:
        convert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, "torch is not installed")

    (tmp_path / checkpoint_files.CONFIG_FILE).unlink()
    with pytest.raises(checkpoint_files.CheckpointError) as excinfo:
        convert.load_checkpoint(str(tmp_path))
    _one_line_error(excinfo, checkpoint_files.CONFIG_FILE)


def test_hub_id_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as excinfo:
        convert.load_checkpoint("google/flan-t5-small")
    assert time.monotonic() - start < 5
    _one_line_error(excinfo, "google/flan-t5-small", "local")
