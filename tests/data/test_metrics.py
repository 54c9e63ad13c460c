"""Every metric equals an independent computation (scipy, hand-written confusion matrices) on random inputs."""

from __future__ import annotations

import collections
import re
import string
import warnings

import numpy as np
import pytest
from scipy import stats

from s3delta_jax.data import compute_metrics, get_task, primary_metric
from s3delta_jax.data import metrics as m
from s3delta_jax.data.tasks import Example

SEEDS = range(5)


def random_labels(rng, n, labels, invalid=("", "2", "yes")):
    """Mostly valid labels with a few invalid strings mixed in."""
    pool = list(labels) + list(invalid)
    weights = np.r_[np.full(len(labels), 0.9 / len(labels)), np.full(len(invalid), 0.1 / len(invalid))]
    return list(rng.choice(pool, size=n, p=weights))


def confusion(predictions, targets, classes):
    """Hand-written confusion counts: rows = targets, columns = predictions."""
    table = {(t, p): 0 for t in classes for p in classes}
    for p, t in zip(predictions, targets):
        table[t, p] += 1
    return table


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy(seed):
    rng = np.random.default_rng(seed)
    targets = list(rng.choice(["0", "1", "2"], 50))
    predictions = random_labels(rng, 50, ["0", "1", "2"])
    assert m.accuracy(predictions, targets) == pytest.approx(100 * sum(map(str.__eq__, predictions, targets)) / 50)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_f1_replaces_invalid_predictions_with_the_wrong_label(seed):
    rng = np.random.default_rng(seed)
    targets = list(rng.choice(["0", "1"], 60))
    predictions = random_labels(rng, 60, ["0", "1"])
    fixed = [p if p in ("0", "1") else ("0" if t == "1" else "1") for p, t in zip(predictions, targets)]
    table = confusion(fixed, targets, ["0", "1"])
    tp, fp, fn = table["1", "1"], table["0", "1"], table["1", "0"]
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert m.binary_f1(predictions, targets) == pytest.approx(100 * 2 * precision * recall / (precision + recall))


def test_binary_f1_without_any_positive_is_zero():
    assert m.binary_f1(["0", "0"], ["0", "0"]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_matthews_binary_matches_the_confusion_matrix_formula(seed):
    rng = np.random.default_rng(seed)
    targets, predictions = list(rng.choice(["0", "1"], 80)), list(rng.choice(["0", "1"], 80))
    table = confusion(predictions, targets, ["0", "1"])
    tp, tn, fp, fn = table["1", "1"], table["0", "0"], table["0", "1"], table["1", "0"]
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m.matthews_corrcoef(predictions, targets) == pytest.approx(100 * expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_matthews_with_invalid_strings_matches_one_hot_covariance(seed):
    """Multi-class MCC = cov(X, Y) / sqrt(cov(X, X) cov(Y, Y)) of one-hot matrices (Gorodkin's R_K)."""
    rng = np.random.default_rng(seed)
    targets = list(rng.choice(["0", "1"], 70))
    predictions = random_labels(rng, 70, ["0", "1"])
    classes = sorted(set(targets) | set(predictions))
    x = np.array([[p == c for c in classes] for p in predictions], float)
    y = np.array([[t == c for c in classes] for t in targets], float)

    def cov(a, b):
        return np.sum((a - a.mean(0)) * (b - b.mean(0)))

    assert m.matthews_corrcoef(predictions, targets) == pytest.approx(100 * cov(x, y) / np.sqrt(cov(x, x) * cov(y, y)))


def test_matthews_of_constant_predictions_is_zero():
    assert m.matthews_corrcoef(["1", "1", "1"], ["0", "1", "1"]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_and_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    targets = np.round(rng.uniform(0, 5, 40), 1)  # rounded: ties, as STS-B targets have
    predictions = np.round(targets + rng.normal(0, 1, 40), 1)
    pred_strings = [str(p) for p in predictions]
    pred_strings[:3] = ["high", "", "3.x"]  # unparsable -> -1
    parsed = np.r_[-1.0, -1.0, -1.0, predictions[3:]]
    target_strings = [str(t) for t in targets]
    assert m.pearson(pred_strings, target_strings) == pytest.approx(100 * stats.pearsonr(parsed, targets)[0])
    assert m.spearman(pred_strings, target_strings) == pytest.approx(100 * stats.spearmanr(parsed, targets)[0])


def test_correlations_that_are_nan_count_as_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(stats.pearsonr([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])[0])
    assert m.pearson(["2.0", "2.0", "2.0"], ["1.0", "2.0", "3.0"]) == 0.0
    assert m.spearman(["2.0", "2.0", "2.0"], ["1.0", "2.0", "3.0"]) == 0.0
    assert m.pearson(["nan", "1.0", "2.0"], ["1.0", "2.0", "3.0"]) == 0.0
    assert m.spearman(["nan", "1.0", "2.0"], ["1.0", "2.0", "3.0"]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_with_zero_division_one(seed):
    rng = np.random.default_rng(seed)
    # Few rows and a skewed class mix, so that some classes are missing from targets or predictions.
    targets = list(rng.choice(["0", "1", "2"], 8, p=[0.6, 0.3, 0.1]))
    predictions = random_labels(rng, 8, ["0", "1"])
    table = confusion(predictions, targets, sorted(set(predictions) | set(targets) | {"0", "1", "2"}))
    scores = []
    for c in ["0", "1", "2"]:
        tp = table[c, c]
        predicted = sum(table[t, c] for t in set(predictions) | set(targets) | {"0", "1", "2"})
        actual = sum(table[c, p] for p in set(predictions) | set(targets) | {"0", "1", "2"})
        precision = tp / predicted if predicted else 1.0  # zero_division = 1
        recall = tp / actual if actual else 1.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert m.macro_f1(predictions, targets, ["0", "1", "2"]) == pytest.approx(100 * np.mean(scores))


@pytest.mark.parametrize("seed", SEEDS)
def test_multirc_f1a_and_group_exact_match(seed):
    rng = np.random.default_rng(seed)
    groups = list(rng.integers(0, 8, 40))
    targets = list(rng.choice(["0", "1"], 40))
    predictions = [t if rng.random() < 0.8 else rng.choice(["0", "1", "x"]) for t in targets]
    task = get_task("superglue-multirc")
    examples = [Example("s", t, {"idx": {"paragraph": 0, "question": int(g), "answer": i}})
                for i, (t, g) in enumerate(zip(targets, groups))]
    by_group = collections.defaultdict(list)
    for p, t, g in zip(predictions, targets, groups):
        by_group[g].append(p == t)
    expected_em = 100 * np.mean([all(v) for v in by_group.values()])
    result = compute_metrics(task, predictions, examples)
    assert list(result) == ["f1a", "group_em"]
    assert result["f1a"] == pytest.approx(m.binary_f1(predictions, targets))
    assert result["group_em"] == pytest.approx(expected_em)


def squad_normalize(text):
    """An independent SQuAD normalisation (str.translate instead of a character filter)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def token_f1(prediction, answer):
    p, a = squad_normalize(prediction).split(), squad_normalize(answer).split()
    common = sum(min(p.count(w), a.count(w)) for w in set(p))
    return 0.0 if common == 0 else 2 * common / (len(p) + len(a))


@pytest.mark.parametrize("seed", SEEDS)
def test_record_max_over_answers_em_and_token_f1(seed):
    rng = np.random.default_rng(seed)
    vocab = ["The", "a", "Obama", "obama,", "Paris", "paris!", "an", "U.S.", "us", "Barack", "the"]
    rows, predictions = [], []
    for _ in range(30):
        answers = [" ".join(rng.choice(vocab, rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
        rows.append({"passage": "P", "query": "Q", "entities": answers, "answers": answers})
        predictions.append(" ".join(rng.choice(vocab, rng.integers(1, 4))))
    task = get_task("superglue-record")
    examples = [e for row in rows for e in task.examples([row])]
    expanded = [p for p, row in zip(predictions, rows) for _ in row["answers"]]  # one prediction per example
    em = [max(squad_normalize(p) == squad_normalize(a) for a in e.row["answers"]) for p, e in zip(expanded, examples)]
    f1 = [max(token_f1(p, a) for a in e.row["answers"]) for p, e in zip(expanded, examples)]
    result = compute_metrics(task, expanded, examples)
    assert list(result) == ["squad_em", "squad_f1"]
    assert result["squad_em"] == pytest.approx(100 * np.mean(em))
    assert result["squad_f1"] == pytest.approx(100 * np.mean(f1))


def test_squad_normalisation_by_hand():
    assert m.normalize_squad("The  Obama, Jr.!") == "obama jr"
    assert m.squad_f1(["barack obama jr"], [["Obama"]]) == pytest.approx(50.0)  # P 1/3, R 1
    assert m.squad_em(["an apple"], [["Apple.", "pear"]]) == 100.0


def test_compute_metrics_follows_the_task_order_and_primary_metric():
    for name in ("mrpc", "stsb", "superglue-cb", "cola"):
        task = get_task(name)
        rows = {"mrpc": {"sentence1": "A", "sentence2": "B", "label": 1},
                "stsb": {"sentence1": "A", "sentence2": "B", "label": 2.5},
                "superglue-cb": {"premise": "P", "hypothesis": "H", "label": 1},
                "cola": {"sentence": "S", "label": 1}}[name]
        examples = task.examples([rows, dict(rows, label=0)])
        result = compute_metrics(task, [e.target for e in examples], examples)
        assert list(result) == list(task.metric_names)
        assert primary_metric(task) == task.metric_names[0]
        assert result[primary_metric(task)] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="one prediction per example"):
        compute_metrics(get_task("mrpc"), ["1"], [])


def test_predictions_are_stripped_as_in_the_reference():
    task = get_task("mrpc")
    examples = task.examples([{"sentence1": "A", "sentence2": "B", "label": 1}])
    assert compute_metrics(task, [" 1 "], examples)["accuracy"] == 100.0


def test_no_scipy_in_the_package():
    import s3delta_jax.data as package
    from pathlib import Path

    sources = "".join(p.read_text() for p in Path(package.__file__).parent.glob("*.py"))
    assert not re.search(r"^\s*(import|from)\s+scipy", sources, re.M)
