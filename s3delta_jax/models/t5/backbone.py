"""T5 as a `Backbone`: text-to-text tasks, the reference's loss and evaluation, the paper's spaces.

The config's `model` section (configs/base.py) names a preset (random weights with `random_init`),
a Hugging Face T5 directory or a hub id. `vocab_size` keeps that many embedding rows (the reference
resizes t5-* from 32128 to 32100 before counting the budget's denominator).

Evaluation methods:
  * "generate" (the reference): greedy decoding to `max_decode_length` tokens, compared as strings;
  * "rank": each row is scored against every target string of the task (sum of token
    log-likelihoods) and the best one is the prediction: exact for tasks with a fixed label set
    and much faster than generation (ReCoRD, whose targets are free-form entities, must generate).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s3delta_jax import data as data_lib
from s3delta_jax.data.pipeline import IGNORE_LABEL
from s3delta_jax.data.tokenizers import BYTE_TOKENIZERS, SPIECE_FILE, Tokenizer, get_tokenizer, local_spiece_file
from s3delta_jax.models import checkpoint_files
from s3delta_jax.models.backbone import ApplyFn, Backbone, Batch, Params, SearchModel, TaskHead
from s3delta_jax.models.dtypes import parse_dtype
from s3delta_jax.models.t5 import convert
from s3delta_jax.models.t5.decoding import cross_entropy_loss, greedy_decode, sequence_log_likelihood, shift_right
from s3delta_jax.models.t5.model import PRESETS, T5Config, T5ConfigError, T5ForConditionalGeneration, get_config
from s3delta_jax.models.t5.model import init_params, logical_axes, param_shapes, scanned_layers
from s3delta_jax.models.t5.spaces import BASELINES, SPACES

EVAL_METHODS = ("generate", "rank")


class T5Backbone(Backbone):
    """A T5 (any size, v1.0 or v1.1 / FLAN) with its SentencePiece or byte tokenizer."""

    family = "t5"
    spaces = SPACES
    baselines = BASELINES
    presets = tuple(PRESETS)
    model_types = ("t5", "mt5")
    hf_auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, name: str, config: T5Config, tokenizer_name: str, checkpoint_dir: str | None = None,
                 checkpoint_config: T5Config | None = None):
        """`tokenizer_name`: "bytes", a SentencePiece file or directory, or a hub id (loaded on first use)."""
        self.name, self.config, self.checkpoint_dir = name, config, checkpoint_dir
        self.tokenizer_name = tokenizer_name
        self._checkpoint_config = checkpoint_config
        self.module = T5ForConditionalGeneration(config)

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer_name)

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict) -> T5Backbone:
        """The T5 of the config's `model` section (see configs/base.py)."""
        dtype = parse_dtype(model_config.dtype)
        vocab_size = model_config.vocab_size or None
        if model_config.random_init:
            overrides = dict(model_config.config_overrides)
            if vocab_size is not None:
                overrides["vocab_size"] = vocab_size
            config = get_config(model_config.name, **overrides, dropout_rate=model_config.dropout_rate,
                                dtype=dtype, param_dtype=dtype)
            directory = checkpoint_config = None
        else:
            if dict(model_config.config_overrides):
                raise T5ConfigError("model.config_overrides applies only with model.random_init=True: a "
                                    "checkpoint's architecture comes from its config.json")
            directory = checkpoint_files.resolve_checkpoint_dir(model_config.name)
            checkpoint_config = T5Config.from_hf_dict(checkpoint_files.read_config(directory), dtype=dtype,
                                                      param_dtype=dtype)
            if vocab_size is not None and vocab_size > checkpoint_config.vocab_size:
                raise T5ConfigError(f"model.vocab_size={vocab_size} exceeds the checkpoint's "
                                    f"{checkpoint_config.vocab_size} rows: pass at most that, or 0 for all")
            config = dataclasses.replace(checkpoint_config, vocab_size=vocab_size or checkpoint_config.vocab_size,
                                         dropout_rate=model_config.dropout_rate)
        tokenizer_name = model_config.tokenizer or directory or model_config.name
        return cls(model_config.name, config, tokenizer_name, directory, checkpoint_config)

    def param_shapes(self) -> Params:
        return param_shapes(self.config)

    def logical_axes(self) -> Params:
        return logical_axes(self.config)

    def init_params(self, rng: jax.Array) -> Params:
        return init_params(self.config, rng)

    def search_model(self, scan_layers: bool = False, remat: str = "none") -> SearchModel:
        """The blocks of each stack under nn.scan (`T5Config.scan_layers`) and/or each block
        rematerialised (`T5Config.remat`: 'none', 'full', 'dots')."""
        config = dataclasses.replace(self.config, scan_layers=scan_layers, remat=remat)
        return SearchModel(T5ForConditionalGeneration(config), scanned_layers(config), param_shapes(config),
                           logical_axes(config))

    def load_params(self) -> Params:
        if self.checkpoint_dir is None:
            raise ValueError(f"{self.name} has random weights: call init_params")
        state_dict = checkpoint_files.read_state_dict(self.checkpoint_dir)
        return convert.params_from_state_dict(state_dict, self._checkpoint_config, self.config.dtype,
                                              self.config.vocab_size)

    def hf_state_dict(self, params: Params) -> dict[str, np.ndarray]:
        return convert.state_dict_from_params(params)

    def save_hf_checkpoint(self, params: Params, directory: str) -> None:
        convert.save_checkpoint(params, self.config, directory)

    def save_tokenizer(self, directory: str) -> None:
        """Copies the SentencePiece file (the byte tokenizer has none)."""
        if self.tokenizer_name not in BYTE_TOKENIZERS:
            shutil.copyfile(_spiece_file(self.tokenizer_name), os.path.join(directory, SPIECE_FILE))

    def example_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        return (ids, ids, ids, ids), {"deterministic": True}

    def encode(self, task: data_lib.Task, examples: Sequence[data_lib.Example],
               max_length: int | None) -> data_lib.EncodedExamples:
        return data_lib.encode_examples(task, examples, self.tokenizer, max_source_length=max_length)

    def task_head(self, task: data_lib.Task, eval_method: str, max_decode_length: int) -> Seq2SeqHead:
        return Seq2SeqHead(self.config, task, self.tokenizer, eval_method, max_decode_length)


class Seq2SeqHead(TaskHead):
    """The reference's text-to-text task: token cross-entropy, then generation or rank classification.

    Batches (data.pipeline): input_ids, attention_mask [b, s]; labels, decoder_attention_mask [b, t].
    """

    def __init__(self, config: T5Config, task: data_lib.Task, tokenizer: Tokenizer, method: str,
                 max_decode_length: int):
        if method not in EVAL_METHODS:
            raise T5ConfigError(f"eval.method {method!r} is not one of {', '.join(EVAL_METHODS)} for T5 "
                                "(the reference generates; rank classification scores each target string)")
        if method == "rank" and not task.target_strings():
            raise T5ConfigError(f"task {task.name!r} has no fixed label set, so rank classification cannot "
                                "score it: use --config.eval.method=generate")
        self.config, self.task, self.tokenizer = config, task, tokenizer
        self.method, self.max_decode_length = method, max_decode_length
        if method == "rank":
            self._label_ids = jnp.asarray(padded_label_ids(task.target_strings(), tokenizer))

    def loss(self, apply_fn: ApplyFn, params: Params, batch: Batch, dropout_key: jax.Array,
             extra: Params | None = None) -> jax.Array:
        """HF mean token cross-entropy (labels padded with -100), dropout on."""
        decoder_input_ids = shift_right(batch["labels"], self.config.decoder_start_token_id, self.config.pad_token_id)
        logits = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"], decoder_input_ids,
                          batch["decoder_attention_mask"], deterministic=False, rngs={"dropout": dropout_key})
        return cross_entropy_loss(logits, batch["labels"])

    def predict(self, apply_fn: ApplyFn, params: Params, batch: Batch, extra: Params | None = None) -> jax.Array:
        """generate: tokens int32[b, max_decode_length]; rank: the best target's index int32[b]."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.method == "generate":
            return greedy_decode(apply_fn, params, ids, mask, self.max_decode_length, self.config)
        score = functools.partial(sequence_log_likelihood, apply_fn, params, ids, mask,
                                  decoder_start_token_id=self.config.decoder_start_token_id,
                                  pad_id=self.config.pad_token_id)
        scores = jnp.stack([score(jnp.broadcast_to(label, (ids.shape[0], label.shape[0])))
                            for label in self._label_ids], axis=1)
        return jnp.argmax(scores, axis=1).astype(jnp.int32)

    def predictions(self, outputs: np.ndarray) -> list[str]:
        if self.method == "generate":
            return [self.tokenizer.decode(row) for row in outputs]
        targets = self.task.target_strings()
        return [targets[i] for i in outputs]


def padded_label_ids(targets: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
    """int32[labels, length]: each target's ids (EOS included), padded with -100 to one common length."""
    encoded = [tokenizer.encode(t) for t in targets]
    length = max(len(ids) for ids in encoded)
    return np.asarray([ids + [IGNORE_LABEL] * (length - len(ids)) for ids in encoded], np.int32)


def _spiece_file(name: str) -> str:
    """The SentencePiece file of a T5 tokenizer name: a local one, or a hub id's (from the cache)."""
    local = local_spiece_file(name)
    if local is not None:
        return local
    from huggingface_hub import hf_hub_download

    return hf_hub_download(name, SPIECE_FILE)
