"""The GLUE and SuperGLUE distributions' own file layouts, turned into Hugging Face rows.

GLUE (the glue_data folders of GLUE's download script; read without CSV quoting, as Hugging Face's
`glue` builder does): train.tsv, dev.tsv (MNLI: dev_matched.tsv) and test.tsv with a header row,
except CoLA's train/dev files, which have none. MRPC is also read from Microsoft's original
msr_paraphrase_train.txt (+ dev_ids.tsv, which picks the validation pairs) and msr_paraphrase_test.txt.
Row idx = the row's number in its file (from 0), as Hugging Face numbers them. Labels are read wherever
a file has them (Microsoft's MRPC test file does, unlike the hub's test split).

SuperGLUE (train.jsonl, val.jsonl, test.jsonl): flat rows for most tasks; MultiRC and ReCoRD nest
questions inside passages and are flattened the way Hugging Face's `super_glue` builder does:
one row per answer for MultiRC with idx {paragraph, question, answer}; one row per query for ReCoRD
with `entities` and `answers` as sorted, de-duplicated lists of strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from s3delta_jax.data.errors import InvalidRowError, MissingDataError, located, shorten
from s3delta_jax.data.files import LocatedRow, read_delimited, read_rows
from s3delta_jax.data.tasks import UNLABELED

# Hugging Face field -> column of GLUE's original TSV files.
GLUE_COLUMNS: dict[str, dict[str, str]] = {
    "cola": {"sentence": "sentence", "label": "label"},
    "sst2": {"sentence": "sentence", "label": "label"},
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "qqp": {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    "qnli": {"question": "question", "sentence": "sentence", "label": "label"},
}
COLA_HEADERLESS_COLUMNS = ("source", "label", "author_label", "sentence")
MRPC_TRAIN, MRPC_TEST, MRPC_DEV_IDS = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv"
GLUE_MARKERS = ("dev.tsv", "dev_matched.tsv", MRPC_TRAIN)


def is_glue_original_dir(task_name: str, directory: Path) -> bool:
    """Whether `directory` holds GLUE's original files for this task (then its .tsv files are unquoted)."""
    return task_name in GLUE_COLUMNS and any((directory / name).exists() for name in GLUE_MARKERS)


def glue_original_file(task_name: str, hf_split: str, directory: Path) -> Path:
    """The original GLUE file that holds `hf_split` (a Hugging Face split name)."""
    if task_name == "mrpc" and (directory / MRPC_TRAIN).exists():
        return directory / (MRPC_TEST if hf_split == "test" else MRPC_TRAIN)
    return directory / f"{hf_split.replace('validation', 'dev')}.tsv"


def read_glue_original(task_name: str, hf_split: str, path: Path) -> Iterator[LocatedRow]:
    """Rows of one original GLUE file as {HF fields..., idx}; no "label" where the file has no label
    column (test files)."""
    headerless = task_name == "cola" and hf_split != "test"
    rows = read_delimited(path, "\t", quoted=False, column_names=COLA_HEADERLESS_COLUMNS if headerless else None)
    dev_ids = _mrpc_dev_ids(path.with_name(MRPC_DEV_IDS)) if path.name == MRPC_TRAIN else None
    for idx, (location, raw) in enumerate(rows):
        if dev_ids is not None and ((raw.get("#1 ID"), raw.get("#2 ID")) in dev_ids) != (hf_split == "validation"):
            continue
        with located(location):
            row = _glue_fields(task_name, raw, idx)
        yield location, row


def _glue_fields(task_name: str, raw: dict[str, str], idx: int) -> dict[str, Any]:
    row: dict[str, Any] = {"idx": idx}
    for field, column in GLUE_COLUMNS[task_name].items():
        if column in raw:
            row[field] = raw[column]
        elif field != "label":
            raise InvalidRowError(f"missing column {column!r} (row has: {', '.join(raw)})")
    return row


def _mrpc_dev_ids(path: Path) -> set[tuple[str, str]]:
    """The (#1 ID, #2 ID) pairs of GLUE's MRPC dev_ids.tsv: the validation rows of msr_paraphrase_train.txt."""
    if not path.exists():
        raise MissingDataError(f"{path} is missing: GLUE's MRPC dev_ids.tsv picks the validation pairs "
                               f"out of {MRPC_TRAIN}")
    return {(row["a"], row["b"]) for _, row in read_delimited(path, "\t", quoted=False, column_names=("a", "b"))}


def flattened_rows(path: Path) -> Iterator[LocatedRow]:
    """Rows of a Hugging Face export or a SuperGLUE file (any format `files.read_rows` reads), with
    nested MultiRC / ReCoRD rows flattened."""
    for location, raw in read_rows(path):
        if not isinstance(raw.get("passage"), dict):
            yield location, raw
            continue
        with located(location):
            flat = flatten_nested(raw)
        for row in flat:
            yield location, row


def flatten_nested(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """A nested MultiRC (passage.questions) or ReCoRD (qas) row -> Hugging Face's flat rows."""
    try:
        return _flatten_record(raw) if "qas" in raw else _flatten_multirc(raw)
    except (KeyError, TypeError, IndexError) as e:
        raise InvalidRowError(
            f"nested SuperGLUE row without the expected structure (bad or missing {shorten(e)})"
        ) from None


def _flatten_multirc(raw: dict[str, Any]) -> list[dict[str, Any]]:
    passage = raw["passage"]
    rows = []
    for question in passage["questions"]:
        for answer in question["answers"]:
            label = answer.get("label")
            rows.append({
                "paragraph": passage["text"],
                "question": question["question"],
                "answer": answer["text"],
                "label": UNLABELED if label is None else int(bool(label)),
                "idx": {"paragraph": raw["idx"], "question": question["idx"], "answer": answer["idx"]},
            })
    return rows


def _flatten_record(raw: dict[str, Any]) -> list[dict[str, Any]]:
    text = raw["passage"]["text"]
    entities = sorted({text[e["start"]: e["end"] + 1] for e in raw["passage"]["entities"]})
    return [
        {
            "passage": text,
            "query": qa["query"],
            "entities": entities,
            "answers": sorted({answer["text"] for answer in qa.get("answers", [])}),
            "idx": {"passage": raw["idx"], "query": qa["idx"]},
        }
        for qa in raw["qas"]
    ]
