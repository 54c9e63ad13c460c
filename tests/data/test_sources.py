"""Reading rows: the shared MRPC export, GLUE's and SuperGLUE's original layouts, Hugging Face exports
in every format, and the quick offline failure of hub datasets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from s3delta_jax.data import get_task, load_split
from s3delta_jax.hub import HubUnavailableError


def test_shared_mrpc_export_counts_and_quoting(mrpc_dir):
    task = get_task("mrpc")
    rows = {split: load_split(task, split, mrpc_dir) for split in ("train", "validation", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 3668, "validation": 408, "test": 1725}
    first = rows["train"][0]
    # The file writes this field as "Amrozi accused his brother , whom he called "" the witness "" , ..."
    assert first["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness " ,')
    assert (first["label"], first["idx"]) == (1, 0)
    assert all(row["label"] in (0, 1) for split_rows in rows.values() for row in split_rows)
    assert sum(row["label"] for row in rows["train"]) == 2474  # MRPC train: 67.4% paraphrases


MSR_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def test_glue_original_mrpc_from_microsoft_files(tmp_path, write):
    write(tmp_path / "msr_paraphrase_train.txt", MSR_HEADER + "1\t11\t12\tA \"quoted\" one\tB\n"
          "0\t21\t22\tC\tD\n1\t31\t32\tE\tF\n")
    write(tmp_path / "dev_ids.tsv", "21\t22\n")
    write(tmp_path / "msr_paraphrase_test.txt", MSR_HEADER + "0\t41\t42\tG\tH\n")
    task = get_task("mrpc")
    train = load_split(task, "train", tmp_path)
    assert train == [{"idx": 0, "sentence1": 'A "quoted" one', "sentence2": "B", "label": 1},
                     {"idx": 2, "sentence1": "E", "sentence2": "F", "label": 1}]
    assert load_split(task, "validation", tmp_path) == [{"idx": 1, "sentence1": "C", "sentence2": "D", "label": 0}]
    assert load_split(task, "test", tmp_path) == [{"idx": 0, "sentence1": "G", "sentence2": "H", "label": 0}]


def test_glue_original_tsv_layouts(tmp_path, write):
    cola = tmp_path / "CoLA"
    write(cola / "train.tsv", "gj04\t1\t\tOur friends won't buy this.\nclc95\t0\t*\tThe more does Bill.\n")
    write(cola / "dev.tsv", "gj04\t1\t\t\"Quoted\" start.\n")
    write(cola / "test.tsv", "index\tsentence\n0\tA test sentence.\n")
    assert load_split(get_task("cola"), "train", cola) == [
        {"idx": 0, "sentence": "Our friends won't buy this.", "label": 1},
        {"idx": 1, "sentence": "The more does Bill.", "label": 0}]
    assert load_split(get_task("cola"), "validation", cola)[0]["sentence"] == '"Quoted" start.'
    assert load_split(get_task("cola"), "test", cola) == [{"idx": 0, "sentence": "A test sentence.", "label": -1}]

    sst2 = tmp_path / "SST-2"
    write(sst2 / "train.tsv", "sentence\tlabel\n\" a gorgeous film \t1\n")
    write(sst2 / "dev.tsv", "sentence\tlabel\nit 's dull . \t0\n")
    assert load_split(get_task("sst2"), "train", sst2)[0] == {"idx": 0, "sentence": '" a gorgeous film ', "label": 1}

    mnli = tmp_path / "MNLI"
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    write(mnli / "train.tsv", header + "0\t1\t1n\tgov\tP0\tH0\tneutral\tneutral\n")
    write(mnli / "dev_matched.tsv", header + "0\t2\t2c\tfiction\tP1\tH1\tcontradiction\tcontradiction\n")
    rows = load_split(get_task("mnli"), "validation", mnli)
    assert rows == [{"idx": 0, "premise": "P1", "hypothesis": "H1", "label": 2}]

    stsb = tmp_path / "STS-B"
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(stsb / "train.tsv", header + "0\tmain-captions\tMSRvid\t2012test\t1\tnone\tnone\tA\tB\t3.800\n")
    write(stsb / "dev.tsv", header)
    assert load_split(get_task("stsb"), "train", stsb)[0]["label"] == pytest.approx(3.8)

    qqp = tmp_path / "QQP"
    write(qqp / "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tWhy?\tHow?\t1\n")
    write(qqp / "dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n")
    assert load_split(get_task("qqp"), "train", qqp) == [
        {"idx": 0, "question1": "Why?", "question2": "How?", "label": 1}]

    qnli = tmp_path / "QNLI"
    write(qnli / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n")
    assert load_split(get_task("qnli"), "validation", qnli)[0]["label"] == 1


def test_superglue_jsonl_flat_and_nested(tmp_path, write):
    boolq = {"question": "q", "passage": "p", "idx": 0, "label": True}
    write(tmp_path / "BoolQ" / "val.jsonl", json.dumps(boolq) + "\n")
    assert load_split(get_task("superglue-boolq"), "validation", tmp_path / "BoolQ") == [
        {"question": "q", "passage": "p", "idx": 0, "label": 1}]

    cb = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 3}
    write(tmp_path / "CB" / "train.jsonl", json.dumps(cb))
    assert load_split(get_task("superglue-cb"), "train", tmp_path / "CB")[0]["label"] == 2

    copa = {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "idx": 0, "label": 1}
    write(tmp_path / "COPA" / "test.jsonl", json.dumps({k: v for k, v in copa.items() if k != "label"}))
    assert load_split(get_task("superglue-copa"), "test", tmp_path / "COPA")[0]["label"] == -1

    multirc = {"idx": 5, "version": 1.1, "passage": {"text": "P<br>Q", "questions": [
        {"question": "q0", "idx": 10,
         "answers": [{"text": "a0", "idx": 0, "label": 1}, {"text": "a1", "idx": 1, "label": 0}]},
        {"question": "q1", "idx": 11, "answers": [{"text": "a2", "idx": 2, "label": 0}]}]}}
    write(tmp_path / "MultiRC" / "val.jsonl", json.dumps(multirc) + "\n")
    rows = load_split(get_task("superglue-multirc"), "validation", tmp_path / "MultiRC")
    assert rows == [
        {"paragraph": "P<br>Q", "question": question, "answer": f"a{answer}", "label": label,
         "idx": {"paragraph": 5, "question": 10 + int(question[1]), "answer": answer}}
        for question, answer, label in [("q0", 0, 1), ("q0", 1, 0), ("q1", 2, 0)]
    ]

    text = "Obama met Merkel in Berlin. Obama left."
    record = {"idx": 2, "source": "cnn", "passage": {"text": text, "entities": [
        {"start": 0, "end": 4}, {"start": 10, "end": 15}, {"start": 20, "end": 25}, {"start": 28, "end": 32}]},
        "qas": [{"query": "@placeholder met", "idx": 7, "answers": [
            {"start": 28, "end": 32, "text": "Obama"}, {"start": 0, "end": 4, "text": "Obama"}]},
            {"query": "q2", "idx": 8}]}
    write(tmp_path / "ReCoRD" / "train.jsonl", json.dumps(record) + "\n")
    rows = load_split(get_task("superglue-record"), "train", tmp_path / "ReCoRD")
    assert rows == [
        {"passage": text, "query": "@placeholder met", "entities": ["Berlin", "Merkel", "Obama"], "answers": ["Obama"],
         "idx": {"passage": 2, "query": 7}},
        {"passage": text, "query": "q2", "entities": ["Berlin", "Merkel", "Obama"], "answers": [],
         "idx": {"passage": 2, "query": 8}},
    ]


MRPC_ROWS = [{"sentence1": 'say "hi"', "sentence2": "B,\tC", "label": 1, "idx": 0},
             {"sentence1": "D", "sentence2": "E", "label": 0, "idx": 1}]
NESTED_ROWS = {  # nested fields: a Parquet struct / list, a JSON object / array, or their Python text in CSV
    "superglue-multirc": [{"paragraph": "P", "question": "Q", "answer": "A", "label": 1,
                           "idx": {"paragraph": 0, "question": 3, "answer": 1}}],
    "superglue-record": [{"passage": "P", "query": "Q", "entities": ["A", "B's"], "answers": ["B's"],
                          "idx": {"passage": 1, "query": 2}}],
    "superglue-wic": [{"word": "bank", "sentence1": "A", "sentence2": "B", "start1": 0, "end1": 1, "start2": 2,
                       "end2": 3, "label": 0, "idx": 4}],
}


def export(rows, path: Path) -> None:
    """Writes `rows` the way Hugging Face `datasets` exports a split."""
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        dataset.to_parquet(str(path))
    elif path.suffix == ".jsonl":
        dataset.to_json(str(path))
    else:
        dataset.to_csv(str(path), sep="\t" if path.suffix == ".tsv" else ",", index=False)


@pytest.mark.parametrize("extension", ["parquet", "jsonl", "csv", "tsv"])
def test_hugging_face_exports_in_every_format(tmp_path, extension):
    export(MRPC_ROWS, tmp_path / f"train.{extension}")
    assert load_split(get_task("mrpc"), "train", tmp_path) == MRPC_ROWS
    for name, rows in NESTED_ROWS.items():
        export(rows, tmp_path / name / f"validation.{extension}")
        assert load_split(get_task(name), "validation", tmp_path / name) == rows


def test_missing_split_file_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"validation_matched\.parquet.*val\.jsonl"):
        load_split(get_task("mnli"), "validation", tmp_path)


def test_hub_dataset_offline_fails_fast_naming_local_files(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as error:
        load_split(get_task("mrpc"), "train")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "\n" not in message and "data_dir" in message and "nyu-mll/glue/mrpc" in message


def test_synthetic_rows_need_no_files_and_are_deterministic():
    task = get_task("synthetic")
    train = load_split(task, "train")
    assert len(train) == 1000 and train == load_split(get_task("synthetic"), "train")
    assert load_split(task, "validation") != load_split(task, "test")
    assert sum(row["label"] for row in train) == 500
    assert all((row["label"] == 1) == ("xyz" in row["sentence1"] + " " + row["sentence2"]) for row in train)
