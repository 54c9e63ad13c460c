"""The reference's metrics (reference doc section 6), all x100, in numpy and pure Python.

Predictions and targets are strings compared as strings, except STS-B's, which are parsed to
floats. `compute_metrics(task, predictions, examples)` returns the task's metrics in its order; the
first is the primary one (checkpoint choice, main score).

| metric name         | tasks              | definition                                                      |
|---------------------|--------------------|-----------------------------------------------------------------|
| accuracy            | most               | exact string match                                              |
| f1                  | MRPC, QQP          | binary F1 of "1"; a prediction other than "0"/"1" counts as the  |
|                     |                    | opposite of the gold label                                      |
| matthews_corrcoef   | CoLA               | multi-class MCC over the raw strings (0 when undefined)         |
| pearson, spearman   | STS-B              | floats; an unparsable prediction is -1; a NaN correlation is 0  |
| macro_f1            | CB                 | mean F1 over the classes "0","1","2"; a class absent from both  |
|                     |                    | predictions and targets scores 1 (zero_division = 1)            |
| f1a, group_em       | MultiRC            | binary F1 (as "f1") over all answer rows; exact match of all    |
|                     |                    | answers of a question (group idx.question), mean over questions |
| squad_em, squad_f1  | ReCoRD             | SQuAD-normalised exact match / token F1, max over gold answers  |
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from s3delta_jax.data.tasks import Example, Task


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    return 100.0 * float(np.mean([p == t for p, t in zip(predictions, targets, strict=True)]))


def binary_f1(predictions: Sequence[str], targets: Sequence[str], positive: str = "1", negative: str = "0") -> float:
    """F1 of class `positive`; a prediction that is neither class is taken as the opposite of the target."""
    opposite = {positive: negative, negative: positive}
    predicted = [p if p in opposite else opposite[t] for p, t in zip(predictions, targets, strict=True)]
    tp = sum(p == positive and t == positive for p, t in zip(predicted, targets))
    wrong = sum(p != t for p, t in zip(predicted, targets))  # false positives + false negatives
    return 100.0 * 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def matthews_corrcoef(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Multi-class Matthews correlation over the strings (every distinct string is a class)."""
    classes = {c: i for i, c in enumerate(sorted(set(predictions) | set(targets)))}
    confusion = np.zeros((len(classes), len(classes)))
    for p, t in zip(predictions, targets, strict=True):
        confusion[classes[t], classes[p]] += 1
    true_sums, pred_sums, n = confusion.sum(axis=1), confusion.sum(axis=0), confusion.sum()
    covariance = np.trace(confusion) * n - true_sums @ pred_sums
    variance_pred, variance_true = n * n - pred_sums @ pred_sums, n * n - true_sums @ true_sums
    if variance_pred * variance_true == 0:
        return 0.0
    return 100.0 * float(covariance / np.sqrt(variance_pred * variance_true))


def parse_floats(texts: Sequence[str], default: float = -1.0) -> np.ndarray:
    """Strings -> floats; an unparsable string becomes `default` (the reference's string_to_float)."""
    values = []
    for text in texts:
        try:
            values.append(float(text))
        except ValueError:
            values.append(default)
    return np.asarray(values, dtype=np.float64)


def pearson(predictions: Sequence[str], targets: Sequence[str]) -> float:
    return 100.0 * _correlation(parse_floats(predictions), parse_floats(targets))


def spearman(predictions: Sequence[str], targets: Sequence[str]) -> float:
    x, y = parse_floats(predictions), parse_floats(targets)
    if np.isnan(x).any() or np.isnan(y).any():
        return 0.0
    return 100.0 * _correlation(_average_ranks(x), _average_ranks(y))


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; 0 where it is undefined (NaN), as the reference guards it."""
    if x.shape != y.shape:
        raise ValueError(f"{len(x)} predictions for {len(y)} targets")
    with np.errstate(invalid="ignore", divide="ignore"):
        dx, dy = x - x.mean(), y - y.mean()
        r = float(np.clip((dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))
    return 0.0 if math.isnan(r) else r


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def macro_f1(predictions: Sequence[str], targets: Sequence[str], classes: Sequence[str]) -> float:
    """Mean over `classes` of 2 tp / (true + predicted); 1 for a class in neither (zero_division=1)."""
    scores = []
    for c in classes:
        tp = sum(p == c and t == c for p, t in zip(predictions, targets, strict=True))
        count = sum(p == c for p in predictions) + sum(t == c for t in targets)
        scores.append(2 * tp / count if count else 1.0)
    return 100.0 * float(np.mean(scores))


def group_exact_match(predictions: Sequence[str], targets: Sequence[str], groups: Sequence[Hashable]) -> float:
    """Share of groups whose predictions all equal their targets."""
    all_right: dict[Hashable, bool] = {}
    for p, t, g in zip(predictions, targets, groups, strict=True):
        all_right[g] = all_right.get(g, True) and p == t
    return 100.0 * float(np.mean(list(all_right.values())))


_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_em(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean over rows of max over gold answers of normalised exact match."""
    scores = [max(normalize_squad(p) == normalize_squad(a) for a in gold)
              for p, gold in zip(predictions, answers, strict=True)]
    return 100.0 * float(np.mean(scores))


def squad_f1(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean over rows of max over gold answers of the token F1 of the normalised strings."""
    scores = [max(_token_f1(p, a) for a in gold) for p, gold in zip(predictions, answers, strict=True)]
    return 100.0 * float(np.mean(scores))


def _token_f1(prediction: str, answer: str) -> float:
    predicted, gold = normalize_squad(prediction).split(), normalize_squad(answer).split()
    same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


MetricFn = Callable[[Task, list[str], Sequence[Example]], float]


def _on_targets(metric: Callable[[Sequence[str], Sequence[str]], float]) -> MetricFn:
    return lambda task, predictions, examples: metric(predictions, [e.target for e in examples])


METRICS: dict[str, MetricFn] = {
    "accuracy": _on_targets(accuracy),
    "f1": _on_targets(binary_f1),
    "matthews_corrcoef": _on_targets(matthews_corrcoef),
    "pearson": _on_targets(pearson),
    "spearman": _on_targets(spearman),
    "macro_f1": lambda task, predictions, examples: macro_f1(
        predictions, [e.target for e in examples], task.target_strings()),
    "f1a": _on_targets(binary_f1),
    "group_em": lambda task, predictions, examples: group_exact_match(
        predictions, [e.target for e in examples], [e.row["idx"]["question"] for e in examples]),
    "squad_em": lambda task, predictions, examples: squad_em(
        predictions, [e.row["answers"] or [e.target] for e in examples]),
    "squad_f1": lambda task, predictions, examples: squad_f1(
        predictions, [e.row["answers"] or [e.target] for e in examples]),
}


def compute_metrics(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """{metric name: value x 100} in `task.metric_names` order (first = primary).

    predictions: generated strings, one per example (stripped here, as the reference does).
    examples: the `Example`s they answer (`Task.examples(rows)`, in the same order).
    """
    if len(predictions) != len(examples) or not examples:
        raise ValueError(f"need one prediction per example and at least one: got {len(predictions)} "
                         f"predictions for {len(examples)} examples")
    predictions = [p.strip() for p in predictions]
    return {name: METRICS[name](task, predictions, examples) for name in task.metric_names}


def primary_metric(task: Task) -> str:
    """The metric that picks checkpoints and is reported as the main score."""
    return task.metric_names[0]
