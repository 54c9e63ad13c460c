"""Malformed files get a one-line DataFormatError naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3delta_jax.data import DataFormatError, get_task, load_split

HEADER = "index\tlabel\tsentence1\tsentence2\n"


def error_of(task_name: str, split: str, directory: Path) -> str:
    with pytest.raises(DataFormatError) as error:
        load_split(get_task(task_name), split, directory)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("body,line,problem", [
    ("0\t1\tA\tB\n1\t7\tC\tD\n", 3, "bad label '7': expected an id 0..1"),  # label out of range
    ("0\t1\tA\tB\n1\tyes\tC\tD\n", 3, "bad label 'yes'"),  # label that names no class
    ("0\t1\tA\tB\n1\t0\tC\n2\t1\tE\tF\n", 3, "broken row: 3 fields where the header has 4"),  # missing field
    ('0\t1\tA\tB\n1\t0\t"C\tD\n', 3, "broken row"),  # unbalanced quote
    ('0\t1\t"A" x\tB\n', 2, "broken row"),  # text after a closing quote
])
def test_tsv_export_errors_name_file_and_line(tmp_path, body, line, problem, write):
    path = write(tmp_path / "train.tsv", HEADER + body)
    message = error_of("mrpc", "train", tmp_path)
    assert message.startswith(f"{path}:{line}: ")
    assert problem in message


def test_missing_column(tmp_path, write):
    path = write(tmp_path / "train.tsv", "index\tlabel\tsentence1\n0\t1\tA\n")
    message = error_of("mrpc", "train", tmp_path)
    assert message.startswith(f"{path}:2: missing column 'sentence2'")


def test_missing_label_column_outside_test_split(tmp_path, write):
    path = write(tmp_path / "validation.csv", "idx,sentence1,sentence2\n0,A,B\n")
    assert error_of("mrpc", "validation", tmp_path).startswith(f"{path}:2: missing column 'label'")


def test_jsonl_errors(tmp_path, write):
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0})
    path = write(tmp_path / "CB" / "val.jsonl", good + "\n" + '{"premise": "p", "hypo\n')
    assert error_of("superglue-cb", "validation", tmp_path / "CB").startswith(f"{path}:2: broken row: not valid JSON")
    write(path, good + "\n\n" + json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}) + "\n")
    message = error_of("superglue-cb", "validation", tmp_path / "CB")
    assert message.startswith(f"{path}:3: bad label 'maybe'") and "neutral" in message
    write(path, "[1, 2]\n")
    assert error_of("superglue-cb", "validation", tmp_path / "CB").startswith(f"{path}:1: broken row")


def test_nested_superglue_row_with_missing_structure(tmp_path, write):
    row = {"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "answers": [{"text": "a"}]}]}}
    path = write(tmp_path / "train.jsonl", json.dumps(row) + "\n")
    message = error_of("superglue-multirc", "train", tmp_path)
    assert message.startswith(f"{path}:1: nested SuperGLUE row") and "idx" in message


def test_glue_original_bad_label_and_missing_column(tmp_path, write):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"
    path = write(tmp_path / "dev_matched.tsv", header + "0\t1\t1e\tgov\tP\tH\tentailment\n1\t2\t2x\tgov\tP\tH\t-\n")
    write(tmp_path / "train.tsv", "index\tsentence1\tgold_label\n0\tP\tneutral\n")
    assert error_of("mnli", "validation", tmp_path).startswith(f"{path}:3: bad label '-'")
    message = error_of("mnli", "train", tmp_path)
    assert message.startswith(f"{tmp_path / 'train.tsv'}:2: missing column 'sentence2'")


def test_non_text_field_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"sentence1": "A", "sentence2": 5, "label": 1}]), path)
    assert error_of("mrpc", "train", tmp_path).startswith(f"{path}: row 0: non-text value 5 in column 'sentence2'")


def test_empty_file(tmp_path, write):
    path = write(tmp_path / "train.csv", "")
    assert error_of("mrpc", "train", tmp_path).startswith(f"{path}:1: empty file")


def test_shortened_list_in_a_csv_export(tmp_path, write):
    path = write(tmp_path / "validation.csv", "passage,query,entities,answers\nP,Q,\"['a' ... 'z']\",['a']\n")
    message = error_of("superglue-record", "validation", tmp_path)
    assert message.startswith(f"{path}:2: column 'entities': expected a list of quoted strings")
