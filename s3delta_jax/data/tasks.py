"""Text-to-text tasks: how a row (a plain dict with Hugging Face field names) becomes source and target
strings, which targets exist, how a prediction decodes back to a label, and how rows are checked.

The concrete GLUE / SuperGLUE tasks are defined in `glue.py`, the built-in toy task in `synthetic.py`;
`registry.get_task(name)` returns them. Four kinds of task share one interface:

  * `Task`: classification; target = str(label id), e.g. "mrpc sentence1: A sentence2: B" -> "1".
  * `MultiRCTask`: classification on answer rows with HTML markup removed from every field.
  * `RegressionTask` (STS-B): target = the score rounded to a string, e.g. 3.8 -> "3.8".
  * `RecordTask` (ReCoRD): one example per gold answer, target = the answer entity.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from s3delta_jax.data.errors import InvalidRowError, shorten
from s3delta_jax.data.tokenizers import Tokenizer

Row = Mapping[str, Any]
SPLITS = ("train", "validation", "test")
TASK_SIZES = ("small", "large")
UNLABELED = -1  # Hugging Face's label value for rows without a gold label (GLUE/SuperGLUE test splits)


@dataclass(frozen=True)
class Example:
    """One text-to-text example: the `source` and `target` strings and the row they were made from
    (metrics read the row: MultiRC's question group, ReCoRD's gold answers)."""

    source: str
    target: str
    row: Row


@dataclass(frozen=True, kw_only=True)
class Task:
    """A classification task in the reference's text-to-text format.

    source = "<name> " + " ".join(keyword, field value for each template entry)
    target = str(label id)   (digits, not words)

    Attributes:
      name: registry name, also the source prefix ("mrpc", "superglue-rte", ...).
      template: (keyword as written in the source, row field) pairs, in source order.
      label_names: class names by label id, as Hugging Face's ClassLabel lists them; files may give
        labels as ids, digit strings, these names (any case) or booleans.
      metric_names: keys of `metrics.compute_metrics`; the first is the primary one.
      size: "small" (validation halved into val/test) or "large" (2,000 train rows as val, the
        validation split as test); see `splits.paper_splits`.
      max_source_length: source tokens kept (EOS included).
      hf_path, hf_config: the Hugging Face dataset; None for built-in data.
      hf_split_renames: (our split, Hugging Face split) where they differ, e.g. MNLI's
        ("validation", "validation_matched").
      int_fields: extra integer fields converted when read from text files (WiC's start1, ...).
      row_generator: for built-in data, `split -> rows`; None for file / hub data.
      fixes: the names of the section-7 reference bugs this instance corrects (see glue.FIXES).
    """

    name: str
    template: tuple[tuple[str, str], ...]
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    size: str
    max_source_length: int
    hf_path: str | None = None
    hf_config: str | None = None
    hf_split_renames: tuple[tuple[str, str], ...] = ()
    int_fields: tuple[str, ...] = ()
    row_generator: Callable[[str], list[dict[str, Any]]] | None = None
    fixes: frozenset[str] = frozenset()

    def __post_init__(self):
        if self.size not in TASK_SIZES:
            raise ValueError(f"task {self.name!r}: size must be one of {TASK_SIZES}, got {self.size!r}")
        if not self.metric_names:
            raise ValueError(f"task {self.name!r}: needs at least one metric name")

    # ----- formatting -------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return self.name

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The row fields the source is made of."""
        return tuple(field for _, field in self.template)

    def format_field(self, field: str, value: Any) -> str:
        """The text of one field as it appears in the source."""
        del field
        return value

    def source(self, row: Row) -> str:
        parts = [self.prefix]
        for keyword, field in self.template:
            parts += [keyword, self.format_field(field, row[field])]
        return " ".join(parts)

    def targets(self, row: Row) -> list[str]:
        """The target strings of one row (one per example made from it)."""
        return [str(self._gold_label(row))]

    def examples(self, rows: Iterable[Row]) -> list[Example]:
        """Rows -> examples, in order (a row gives several examples only for ReCoRD)."""
        out = []
        for row in rows:
            source = self.source(row)
            out += [Example(source, target, row) for target in self.targets(row)]
        return out

    def segments(self, row: Row) -> tuple[str, ...]:
        """The text an encoder reads: one segment, or a pair (every field but the last joined by
        spaces, then the last), without the text-to-text keywords."""
        texts = [self.format_field(field, row[field]) for field in self.text_fields]
        return tuple(texts) if len(texts) <= 2 else (" ".join(texts[:-1]), texts[-1])

    def label(self, row: Row) -> Any:
        """The gold label of a row: a class id (a score for regression tasks)."""
        return self._gold_label(row)

    def target_strings(self) -> tuple[str, ...]:
        """Every target the task can have (the reference's label list)."""
        return tuple(str(i) for i in range(len(self.label_names)))

    def max_target_length(self, tokenizer: Tokenizer) -> int:
        """The longest tokenized target (EOS included), as the reference sets max_target_length."""
        return max(len(tokenizer.encode(t)) for t in self.target_strings())

    def decode_prediction(self, text: str) -> Any:
        """A generated string -> the label it names (here the class id), or None if it names none."""
        text = text.strip()
        return int(text) if text in self.target_strings() else None

    # ----- data sources ---------------------------------------------------------------------
    def hf_split(self, split: str) -> str:
        """Our split name ("train" / "validation" / "test") -> the Hugging Face split name."""
        check_split(split)
        return dict(self.hf_split_renames).get(split, split)

    def normalize_row(self, row: Row, *, require_label: bool = True) -> dict[str, Any]:
        """Checks a raw row (from a file or the hub) and returns it with Hugging Face types.

        Text fields must be present strings; "index" is renamed to "idx"; "idx" and `int_fields`
        become ints (or the idx dict); the label is parsed (`UNLABELED` where it may be absent, i.e.
        `require_label=False`). Raises InvalidRowError with a one-line reason.
        """
        out = dict(row)
        if "idx" not in out and "index" in out:
            out["idx"] = out.pop("index")
        for field in self.text_fields:
            value = out.get(field)
            if not isinstance(value, str):
                what = "missing column" if value is None else f"non-text value {shorten(value)} in column"
                raise InvalidRowError(f"{what} {field!r} (row has: {', '.join(map(str, row))})")
        if out.get("idx") is not None:
            out["idx"] = self._parse_idx(out["idx"])
        for field in self.int_fields:
            if field in out:
                out[field] = _parse_int(out[field], field)
        out.update(self._normalized_label(out, require_label))
        return out

    def _parse_idx(self, value: Any) -> Any:
        return _parse_int(value, "idx")

    def _normalized_label(self, row: Row, require_label: bool) -> dict[str, Any]:
        value = row.get("label")
        if value is None or (isinstance(value, str) and not value.strip()):
            if require_label:
                raise InvalidRowError("missing column 'label' (only test splits may lack labels)")
            return {"label": UNLABELED}
        return {"label": self.parse_label(value)}

    def parse_label(self, value: Any) -> Any:
        """A label as found in a file -> the label id; raises InvalidRowError if it is none."""
        n = len(self.label_names)
        names = [name.lower() for name in self.label_names]
        if isinstance(value, str) and value.strip().lower() in names:
            return names.index(value.strip().lower())
        if isinstance(value, (bool, int, np.integer)) or (isinstance(value, float) and value.is_integer()):
            label = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            label = int(value)
        else:
            label = None
        if label is None or not (label == UNLABELED or 0 <= label < n):
            raise InvalidRowError(
                f"bad label {shorten(value)}: expected an id 0..{n - 1}, one of "
                f"{list(self.label_names)}, or {UNLABELED} for unlabeled rows"
            )
        return label

    def _gold_label(self, row: Row) -> Any:
        label = row["label"]
        if label == UNLABELED:
            raise InvalidRowError(
                f"task {self.name!r}: a row without a gold label (label -1, as in GLUE/SuperGLUE test "
                "splits) cannot become a training/eval example; use splits.paper_splits, which takes "
                "test rows from the labelled validation split"
            )
        return label


@dataclass(frozen=True, kw_only=True)
class MultiRCTask(Task):
    """MultiRC answer rows: `<br>` becomes a space and `<b>`/`</b>` are removed in every field; the
    row's `idx` must be the {paragraph, question, answer} dict (idx.question groups the answers)."""

    def format_field(self, field: str, value: Any) -> str:
        del field
        return re.sub("<(/)?b>", "", re.sub("<br>", " ", value))

    def _parse_idx(self, value: Any) -> Any:
        idx = _parse_dict(value, "idx")
        missing = {"paragraph", "question", "answer"} - set(idx)
        if missing:
            raise InvalidRowError(f"idx {shorten(value)} lacks {sorted(missing)}")
        return {key: _parse_int(idx[key], f"idx.{key}") for key in ("paragraph", "question", "answer")}

    def normalize_row(self, row: Row, *, require_label: bool = True) -> dict[str, Any]:
        if row.get("idx") is None:
            raise InvalidRowError("missing column 'idx' (MultiRC needs {paragraph, question, answer})")
        return super().normalize_row(row, require_label=require_label)


@dataclass(frozen=True, kw_only=True)
class RegressionTask(Task):
    """STS-B: the target is the similarity score (0..5) as a rounded decimal string.

    The reference computes np.round((x * 5) / 5, 1), which only rounds to 0.1 (51 targets); with
    `snap_to_fifths` (fix "stsb_rounding") it rounds to the intended 0.2 steps (26 targets).
    """

    max_score: float = 5.0
    snap_to_fifths: bool = False

    def format_score(self, score: float) -> str:
        scaled = np.round(score * 5) if self.snap_to_fifths else score * 5
        return str(float(np.round(scaled / 5, decimals=1)))

    def targets(self, row: Row) -> list[str]:
        return [self.format_score(self._gold_label(row))]

    def target_strings(self) -> tuple[str, ...]:
        step = 0.2 if self.snap_to_fifths else 0.1
        return tuple(self.format_score(i * step) for i in range(round(self.max_score / step) + 1))

    def decode_prediction(self, text: str) -> float | None:
        try:
            value = float(text.strip())
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    def parse_label(self, value: Any) -> float:
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if score != UNLABELED and not 0.0 <= score <= self.max_score:
            raise InvalidRowError(
                f"bad label {shorten(value)}: expected a score in [0, {self.max_score}] or {UNLABELED}"
            )
        return score


@dataclass(frozen=True, kw_only=True)
class RecordTask(Task):
    """ReCoRD: "<name> record query: Q entities: e1, e2 passage: P"; one example per gold answer.

    In the passage, a punctuation mark (. ? ! " ') followed by "\\n@highlight\\n" becomes that mark
    plus a space; any other "\\n@highlight\\n" becomes ". ". A row without answers gives one example
    with target "<unk>". Rows carry `entities` and `answers` as lists of strings (Hugging Face's
    super_glue/record: both sorted and de-duplicated).
    """

    max_answer_length: int = 128
    no_answer_target: str = "<unk>"

    def format_field(self, field: str, value: Any) -> str:
        if field == "entities":
            return ", ".join(value)
        if field == "passage":
            value = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", value)
            return re.sub(r"\n@highlight\n", ". ", value)
        return value

    @property
    def text_fields(self) -> tuple[str, ...]:
        return ("passage", "query")

    def targets(self, row: Row) -> list[str]:
        return list(row["answers"]) or [self.no_answer_target]

    def target_strings(self) -> tuple[str, ...]:
        """None: ReCoRD's targets are passage entities, not a fixed label list."""
        return ()

    def max_target_length(self, tokenizer: Tokenizer) -> int:
        del tokenizer
        return self.max_answer_length

    def decode_prediction(self, text: str) -> str:
        """The predicted entity string (stripped)."""
        return text.strip()

    def _parse_idx(self, value: Any) -> Any:
        idx = _parse_dict(value, "idx")
        return {key: _parse_int(item, f"idx.{key}") for key, item in idx.items()}

    def _normalized_label(self, row: Row, require_label: bool) -> dict[str, Any]:
        entities = _parse_string_list(row.get("entities"), "entities")
        if entities is None:
            raise InvalidRowError("missing column 'entities'")
        answers = _parse_string_list(row.get("answers"), "answers")
        if answers is None and require_label:
            raise InvalidRowError("missing column 'answers' (only test splits may lack answers)")
        return {"entities": entities, "answers": answers or []}


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")


def _parse_int(value: Any, field: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise InvalidRowError(f"column {field!r}: expected an integer, got {shorten(value)}")


def _parse_dict(value: Any, field: str) -> dict[str, Any]:
    """A dict, or its JSON or Python-literal text (as CSV exports write a nested idx)."""
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError):
                continue
    if not isinstance(value, dict):
        raise InvalidRowError(f"column {field!r}: expected a dict (or its text), got {shorten(value)}")
    return value


def _parse_string_list(value: Any, field: str) -> list[str] | None:
    """A list of strings, or its text: JSON, or Python string literals in brackets separated by commas
    or by spaces (numpy's repr, which Hugging Face's CSV export writes: "['a' \"b's\"]")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = _string_literals(value, field)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise InvalidRowError(f"column {field!r}: expected a list of strings, got {shorten(value)}")
    return value


def _string_literals(text: str, field: str) -> list[str]:
    problem = InvalidRowError(
        f"column {field!r}: expected a list of quoted strings, got {shorten(text)}; "
        "export nested fields as JSONL or Parquet"
    )
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise problem
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        raise problem from None
    layout = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}
    items = []
    for token in tokens:
        if token.type == tokenize.STRING:
            items.append(ast.literal_eval(token.string))
        elif token.type not in layout and token.string not in ("[", "]", ","):
            raise problem  # e.g. numpy's "..." in a shortened repr
    return items
