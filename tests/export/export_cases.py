"""Cases of the export tests: tiny random T5 and BERT saved as Hugging Face checkpoints, re-trained
structures on them with random non-zero deltas, padded batches, and what our Flax model computes."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from configs.base import base_config
from s3delta_jax import data as data_lib
from s3delta_jax.deltas import Rule, expand, init_delta, with_deltas
from s3delta_jax.export import Retrained
from s3delta_jax.models import bert, t5
from s3delta_jax.models.t5 import convert as t5_convert
from s3delta_jax.models.registry import load_backbone

ATOL = 1e-4
SPIECE = Path(__file__).resolve().parents[3] / "shared" / "data" / "t5" / "spiece.model"
T5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=96,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)
BERT_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

# LoRA (two at one linear) + LNFit on T5: what both formats hold.
T5_RULES = [[Rule(r"SelfAttention/(q|v)", "linear", "lora", {"r": 2}),
             Rule(r"encoder/block_0/layer_0/SelfAttention/v", "linear", "lora", {"r": 1, "alpha": 4.0}, key="lora_2"),
             Rule(r"DenseReluDense/wo", "linear", "lora", {"r": 1, "alpha": 8.0}),
             Rule(r"(layer_norm|final_layer_norm)", "norm", "lnfit")]]
# BitFit on T5's bias-free linears, beside a LoRA and alone: only PEFT's LoRA biases hold it.
T5_BITFIT_RULES = [[*T5_RULES[0], Rule(r"decoder/block_1/layer_0/SelfAttention/q", "linear", "bitfit"),
                    Rule(r"SelfAttention/o", "linear", "bitfit")]]
BERT_RULES = [[Rule(r"self/(query|value)", "linear", "lora", {"r": 2}),
               Rule(r"LayerNorm", "norm", "lnfit"),
               Rule(r"(attention/output|intermediate)/dense", "linear", "bitfit"),
               Rule(r"output/LayerNorm", "norm", "bitfit")]]


def perturbed(tree, key: jax.Array, scale: float):
    """`tree` plus N(0, scale^2) noise on every leaf (LoRA's B starts at zero, BitFit and LNFit too)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def model_config(directory: str, tokenizer: str):
    """The `model` section of a run's config for a saved checkpoint."""
    config = base_config().model
    config.update(dict(name=directory, tokenizer=tokenizer, vocab_size=0, dropout_rate=0.0))
    return config


def saved_backbone(family: str, directory: str, tokenizer: str = ""):
    """A tiny random backbone of `family` (biases and norm scales perturbed), saved as a Hugging Face
    checkpoint in `directory` and loaded back from there."""
    key = jax.random.PRNGKey(0)
    if family == "t5":
        config, model, convert = t5.get_config("t5-small", **T5_TINY), t5, t5_convert
    else:
        config, model, convert = bert.get_config("minilm-l6", **BERT_TINY), bert, bert.convert
    params = perturbed(model.init_params(config, key), jax.random.fold_in(key, 1), 0.05)
    convert.save_checkpoint(params, config, directory)
    return load_backbone(model_config(directory, tokenizer))


def retrained(backbone, rules, seed: int = 0, task_name: str | None = None) -> Retrained:
    """The structure of `rules` with random non-zero deltas (and a random head for an encoder task)."""
    key = jax.random.PRNGKey(seed)
    candidates = expand(rules, backbone.positions()).candidates
    delta = perturbed(init_delta(key, candidates), jax.random.fold_in(key, 1), 0.05)
    task = extra = None
    if task_name is not None:
        task = data_lib.get_task(task_name)
        head = backbone.task_head(task, "classify", 0)
        extra = perturbed(head.init_extra(jax.random.fold_in(key, 2)), jax.random.fold_in(key, 3), 0.1)
    return Retrained(backbone, backbone.load_params(), candidates, delta, extra, task)


def t5_batch(vocab_size: int) -> dict[str, np.ndarray]:
    """Encoder inputs padded on the right and on the left, decoder inputs padded on the right."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(2, vocab_size, (3, 11))
    attention_mask = np.ones((3, 11), np.int64)
    attention_mask[0, 7:] = 0
    attention_mask[1, :3] = 0
    decoder_input_ids = rng.integers(2, vocab_size, (3, 5))
    decoder_attention_mask = np.ones((3, 5), np.int64)
    decoder_attention_mask[2, 3:] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask)


def bert_batch(vocab_size: int) -> dict[str, np.ndarray]:
    """Rows padded on the right (one almost empty) with two segments."""
    rng = np.random.default_rng(1)
    input_ids = rng.integers(3, vocab_size, (3, 12))
    attention_mask = np.ones((3, 12), np.int64)
    attention_mask[0, 8:] = 0
    attention_mask[2, 2:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = np.zeros((3, 12), np.int64)
    token_type_ids[:, 5:] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def flax_t5_logits(case: Retrained, batch, deltas: bool = True) -> np.ndarray:
    """Our T5's logits f32[B, T, V] with the deltas injected (or without: the frozen backbone)."""
    apply = with_deltas(case.backbone.module.apply, case.candidates if deltas else [], case.delta)
    return np.asarray(apply({"params": case.params}, **{k: jnp.asarray(v) for k, v in batch.items()}, deterministic=True))


def flax_bert_outputs(case: Retrained, batch, candidates=None, delta=None) -> tuple[np.ndarray, np.ndarray]:
    """Our encoder's (last hidden f32[B, L, H], head logits f32[B, C]) with the case's deltas (or the given ones)."""
    candidates = case.candidates if candidates is None else candidates
    apply = with_deltas(case.backbone.module.apply, candidates, case.delta if delta is None else delta)
    inputs = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    hidden = apply({"params": case.params}, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                   deterministic=True)
    logits = None
    if case.extra is not None:
        head = case.backbone.task_head(case.task, "classify", 0)
        logits = np.asarray(head.outputs(apply, case.params, inputs, case.extra, None))
    return np.asarray(hidden), logits


def torch_inputs(batch) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
