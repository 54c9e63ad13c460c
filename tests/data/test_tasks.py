"""Every task formats hand-written rows exactly as the reference's templates (reference doc section 6)."""

from __future__ import annotations

import pytest

from s3delta_jax.data import get_task, task_names
from s3delta_jax.data.errors import InvalidRowError
from s3delta_jax.data.tokenizers import get_tokenizer

# (task, row, expected source, expected targets); the strings are written out from the reference table.
CASES = [
    ("cola", {"sentence": "S.", "label": 1}, "cola sentence: S.", ["1"]),
    ("sst2", {"sentence": "a fine film", "label": 0}, "sst2 sentence: a fine film", ["0"]),
    ("mrpc", {"sentence1": "A", "sentence2": "B", "label": 1}, "mrpc sentence1: A sentence2: B", ["1"]),
    ("qqp", {"question1": "Why?", "question2": "How?", "label": 0}, "qqp question1: Why? question2: How?", ["0"]),
    ("stsb", {"sentence1": "A", "sentence2": "B", "label": 3.8}, "stsb sentence1: A sentence2: B", ["3.8"]),
    ("mnli", {"premise": "P", "hypothesis": "H", "label": 2}, "mnli premise: P hypothesis H", ["2"]),
    ("qnli", {"question": "Q", "sentence": "S", "label": 1}, "qnli question: Q sentence: S", ["1"]),
    ("superglue-rte", {"premise": "P", "hypothesis": "H", "label": 0},
     "superglue-rte premise: P hypothesis: H", ["0"]),
    ("superglue-boolq", {"question": "is it", "passage": "P", "label": 1},
     "superglue-boolq question: is it passage: P", ["1"]),
    ("superglue-cb", {"premise": "P", "hypothesis": "H", "label": 2},
     "superglue-cb premise: P hypothesis: H", ["2"]),
    ("superglue-copa", {"premise": "P", "choice1": "C1", "choice2": "C2", "question": "cause", "label": 1},
     "superglue-copa premise: P choice1: C1 choice2: C2", ["1"]),
    ("superglue-multirc",
     {"paragraph": "<b>Sent 1: </b>Hi there.<br><b>Sent 2: </b>Bye.", "question": "Who <b>left</b>?",
      "answer": "Bob<br>and Al", "label": 0, "idx": {"paragraph": 0, "question": 7, "answer": 1}},
     "superglue-multirc question: Who left? answer: Bob and Al paragraph: Sent 1: Hi there. Sent 2: Bye.", ["0"]),
    ("superglue-wic", {"word": "bank", "sentence1": "A", "sentence2": "B", "label": 1},
     "superglue-wic sentence1: A sentence2: B word: bank", ["1"]),
    ("superglue-record",
     {"passage": 'Obama visits Paris.\n@highlight\nHe met Macron\n@highlight\n"Talks went well"\n@highlight\nEnd?'
                 "\n@highlight\nDone",
      "query": "@placeholder met the president", "entities": ["Macron", "Obama", "Paris"],
      "answers": ["Obama", "Barack Obama"]},
     "superglue-record record query: @placeholder met the president entities: Macron, Obama, Paris "
     'passage: Obama visits Paris. He met Macron. "Talks went well" End? Done',
     ["Obama", "Barack Obama"]),
]


def test_cases_cover_every_reference_task():
    assert sorted(case[0] for case in CASES) == sorted(set(task_names()) - {"synthetic"})
    assert len(CASES) == 14


@pytest.mark.parametrize("name,row,source,targets", CASES, ids=[c[0] for c in CASES])
def test_reference_format(name, row, source, targets):
    task = get_task(name)
    examples = task.examples([row])
    assert [e.source for e in examples] == [source] * len(targets)
    assert [e.target for e in examples] == targets
    assert all(e.row is row for e in examples)


def test_record_without_answers_targets_unk():
    task = get_task("superglue-record")
    row = {"passage": "P", "query": "Q", "entities": ["E"], "answers": []}
    assert [e.target for e in task.examples([row])] == ["<unk>"]


@pytest.mark.parametrize("score,reference,fixed", [(3.8, "3.8", "3.8"), (3.66, "3.7", "3.6"), (0.0, "0.0", "0.0"),
                                                   (5.0, "5.0", "5.0"), (2.44, "2.4", "2.4"), (1.09, "1.1", "1.0")])
def test_stsb_targets_round_to_tenths_by_default_and_fifths_when_fixed(score, reference, fixed):
    row = {"sentence1": "A", "sentence2": "B", "label": score}
    assert get_task("stsb").targets(row) == [reference]
    assert get_task("stsb", fix_reference_bugs=["stsb_rounding"]).targets(row) == [fixed]


def test_stsb_target_lists():
    assert get_task("stsb").target_strings() == tuple(f"{i // 10}.{i % 10}" for i in range(51))
    assert get_task("stsb", fix_reference_bugs=True).target_strings() == tuple(
        f"{i // 10}.{i % 10}" for i in range(0, 51, 2))


def test_fixes_correct_copa_and_mnli_and_leave_others():
    copa_row = {"premise": "P", "choice1": "C1", "choice2": "C2", "question": "effect", "label": 0}
    assert get_task("superglue-copa", fix_reference_bugs=True).source(copa_row) == \
        "superglue-copa premise: P question: effect choice1: C1 choice2: C2"
    mnli_row = {"premise": "P", "hypothesis": "H", "label": 0}
    fixed = get_task("mnli", fix_reference_bugs={"mnli_hypothesis_colon"})
    assert fixed.source(mnli_row) == "mnli premise: P hypothesis: H"
    assert fixed.fixes == {"mnli_hypothesis_colon"}
    # A fix that concerns another task changes nothing.
    assert get_task("mnli", fix_reference_bugs=["copa_question"]).source(mnli_row) == "mnli premise: P hypothesis H"
    assert get_task("mrpc", fix_reference_bugs=True) == get_task("mrpc")
    with pytest.raises(ValueError, match="unknown reference fixes"):
        get_task("mnli", fix_reference_bugs=["mnli_colon_typo"])


def test_task_metadata_matches_reference_tables():
    expected = {  # name: (size, metrics, source length, HF dataset/config)
        "cola": ("small", ("matthews_corrcoef",), 128, "nyu-mll/glue", "cola"),
        "sst2": ("large", ("accuracy",), 128, "nyu-mll/glue", "sst2"),
        "mrpc": ("small", ("f1", "accuracy"), 128, "nyu-mll/glue", "mrpc"),
        "qqp": ("large", ("f1", "accuracy"), 128, "nyu-mll/glue", "qqp"),
        "stsb": ("small", ("pearson", "spearman"), 128, "nyu-mll/glue", "stsb"),
        "mnli": ("large", ("accuracy",), 128, "nyu-mll/glue", "mnli"),
        "qnli": ("large", ("accuracy",), 128, "nyu-mll/glue", "qnli"),
        "superglue-boolq": ("small", ("accuracy",), 256, "aps/super_glue", "boolq"),
        "superglue-cb": ("small", ("macro_f1", "accuracy"), 256, "aps/super_glue", "cb"),
        "superglue-copa": ("small", ("accuracy",), 256, "aps/super_glue", "copa"),
        "superglue-multirc": ("small", ("f1a", "group_em"), 256, "aps/super_glue", "multirc"),
        "superglue-record": ("large", ("squad_em", "squad_f1"), 512, "aps/super_glue", "record"),
        "superglue-rte": ("small", ("accuracy",), 256, "aps/super_glue", "rte"),
        "superglue-wic": ("small", ("accuracy",), 256, "aps/super_glue", "wic"),
    }
    for name, (size, metrics, length, path, config) in expected.items():
        task = get_task(name)
        assert (task.size, task.metric_names, task.max_source_length, task.hf_path, task.hf_config) == \
            (size, metrics, length, path, config), name
    assert get_task("mnli").hf_split("validation") == "validation_matched"
    assert get_task("mnli").hf_split("train") == "train"


def test_target_lengths_with_the_t5_vocabulary_and_bytes(shared_data):
    byte_tokenizer = get_tokenizer("bytes")
    assert get_task("mrpc").max_target_length(byte_tokenizer) == 2  # one digit + EOS
    assert get_task("superglue-cb").max_target_length(byte_tokenizer) == 2
    assert get_task("stsb").max_target_length(byte_tokenizer) == 4  # "3.8" + EOS
    assert get_task("superglue-record").max_target_length(byte_tokenizer) == 128
    spiece = shared_data / "t5" / "spiece.model"
    if spiece.exists():
        assert get_task("mrpc").max_target_length(get_tokenizer(str(spiece))) == 2  # the doc's "2 tokens"


def test_decode_prediction():
    assert get_task("mrpc").decode_prediction(" 1 ") == 1
    assert get_task("mrpc").decode_prediction("2") is None
    assert get_task("superglue-cb").decode_prediction("2") == 2
    assert get_task("stsb").decode_prediction("3.8") == pytest.approx(3.8)
    assert get_task("stsb").decode_prediction("high") is None
    assert get_task("stsb").decode_prediction("nan") is None
    assert get_task("superglue-record").decode_prediction(" Barack Obama ") == "Barack Obama"


@pytest.mark.parametrize("name,value,label", [
    ("mnli", "neutral", 1), ("mnli", "Contradiction", 2), ("superglue-cb", "neutral", 2),
    ("superglue-boolq", True, 1), ("superglue-wic", "false", 0), ("superglue-copa", "choice2", 1),
    ("mrpc", "1", 1), ("mrpc", 0, 0), ("qnli", "not_entailment", 1), ("mrpc", "-1", -1),
])
def test_labels_parse_from_ids_names_and_booleans(name, value, label):
    assert get_task(name).parse_label(value) == label


@pytest.mark.parametrize("name,value", [("mrpc", "2"), ("mrpc", "yes"), ("mnli", "-"), ("stsb", "7.5"),
                                        ("stsb", "high"), ("superglue-cb", 3)])
def test_bad_labels_are_rejected(name, value):
    with pytest.raises(InvalidRowError, match="bad label"):
        get_task(name).parse_label(value)


def test_unlabelled_rows_cannot_become_examples():
    with pytest.raises(InvalidRowError, match="no.*label|without a gold label"):
        get_task("mrpc").examples([{"sentence1": "A", "sentence2": "B", "label": -1}])


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="superglue-rte"):
        get_task("wnli")


def test_superglue_tasks_answer_to_their_hugging_face_config_names():
    for config in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic"):
        assert get_task(config) == get_task(f"superglue-{config}")
    assert get_task("rte").prefix == "superglue-rte"
