"""The GLUE and SuperGLUE tasks exactly as the reference (thunlp/S3Delta, reference doc section 6)
formats them, and the optional fixes of its section-7 format bugs.

Prefix names: the reference names "mrpc" and "superglue-rte"; the others follow the same pattern
(its compacter/OpenDelta lineage): GLUE tasks by their Hugging Face config name ("cola", "sst2",
"mrpc", "qqp", "stsb", "mnli", "qnli"), SuperGLUE tasks as "superglue-<config>" ("superglue-boolq",
"superglue-cb", "superglue-copa", "superglue-multirc", "superglue-record", "superglue-rte",
"superglue-wic").

Source lengths: GLUE 128, SuperGLUE 256, ReCoRD 512. Data: the Hugging Face hub datasets
"nyu-mll/glue" and "aps/super_glue" (the current homes of the `glue` / `super_glue` builders).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from s3delta_jax.data.tasks import MultiRCTask, RecordTask, RegressionTask, Task

GLUE_HUB = "nyu-mll/glue"
SUPERGLUE_HUB = "aps/super_glue"
GLUE_SOURCE_LENGTH = 128
SUPERGLUE_SOURCE_LENGTH = 256
RECORD_SOURCE_LENGTH = 512

_PAIR = (("sentence1:", "sentence1"), ("sentence2:", "sentence2"))
_ENTAILMENT = (("premise:", "premise"), ("hypothesis:", "hypothesis"))
_FALSE_TRUE = ("False", "True")


def _glue(name: str, template, label_names, metrics, size: str, kind: type[Task] = Task, **kwargs) -> Task:
    return kind(
        name=name, template=template, label_names=label_names, metric_names=metrics, size=size,
        max_source_length=GLUE_SOURCE_LENGTH, hf_path=GLUE_HUB, hf_config=name, **kwargs,
    )


def _superglue(
    config: str, template, label_names, metrics, size: str = "small", kind: type[Task] = Task, **kwargs
) -> Task:
    kwargs.setdefault("max_source_length", SUPERGLUE_SOURCE_LENGTH)
    return kind(
        name=f"superglue-{config}", template=template, label_names=label_names, metric_names=metrics,
        size=size, hf_path=SUPERGLUE_HUB, hf_config=config, **kwargs,
    )


REFERENCE_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _glue("cola", (("sentence:", "sentence"),), ("unacceptable", "acceptable"),
              ("matthews_corrcoef",), "small"),
        _glue("sst2", (("sentence:", "sentence"),), ("negative", "positive"), ("accuracy",), "large"),
        _glue("mrpc", _PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "small"),
        _glue("qqp", (("question1:", "question1"), ("question2:", "question2")),
              ("not_duplicate", "duplicate"), ("f1", "accuracy"), "large"),
        _glue("stsb", _PAIR, (), ("pearson", "spearman"), "small", kind=RegressionTask),
        # The reference writes "hypothesis" without a colon (section 7, item 12).
        _glue("mnli", (("premise:", "premise"), ("hypothesis", "hypothesis")),
              ("entailment", "neutral", "contradiction"), ("accuracy",), "large",
              hf_split_renames=(("validation", "validation_matched"), ("test", "test_matched"))),
        _glue("qnli", (("question:", "question"), ("sentence:", "sentence")),
              ("entailment", "not_entailment"), ("accuracy",), "large"),
        _superglue("boolq", (("question:", "question"), ("passage:", "passage")), _FALSE_TRUE,
                   ("accuracy",)),
        _superglue("cb", _ENTAILMENT, ("entailment", "contradiction", "neutral"),
                   ("macro_f1", "accuracy")),
        # The reference drops COPA's cause/effect "question" field (section 7, item 11).
        _superglue("copa", (("premise:", "premise"), ("choice1:", "choice1"), ("choice2:", "choice2")),
                   ("choice1", "choice2"), ("accuracy",)),
        _superglue("multirc", (("question:", "question"), ("answer:", "answer"),
                               ("paragraph:", "paragraph")),
                   _FALSE_TRUE, ("f1a", "group_em"), kind=MultiRCTask),
        # Primary metric EM, as the reference's dict order makes it (section 7, item 13).
        _superglue("record", (("record query:", "query"), ("entities:", "entities"),
                              ("passage:", "passage")),
                   (), ("squad_em", "squad_f1"), "large", kind=RecordTask,
                   max_source_length=RECORD_SOURCE_LENGTH),
        _superglue("rte", _ENTAILMENT, ("entailment", "not_entailment"), ("accuracy",)),
        _superglue("wic", (("sentence1:", "sentence1"), ("sentence2:", "sentence2"), ("word:", "word")),
                   _FALSE_TRUE, ("accuracy",), int_fields=("start1", "start2", "end1", "end2")),
    )
}


class Fix(NamedTuple):
    """A correction of one reference format bug: the task it applies to and how."""

    task: str
    apply: Callable[[Task], Task]
    what: str


FIXES: dict[str, Fix] = {
    "stsb_rounding": Fix(
        "stsb", lambda t: dataclasses.replace(t, snap_to_fifths=True),
        "round STS-B targets to 0.2 steps (26 classes) as intended, not 0.1",
    ),
    "copa_question": Fix(
        "superglue-copa",
        lambda t: dataclasses.replace(t, template=(t.template[0], ("question:", "question")) + t.template[1:]),
        "keep COPA's cause/effect question: 'premise: P question: Q choice1: C1 choice2: C2'",
    ),
    "mnli_hypothesis_colon": Fix(
        "mnli",
        lambda t: dataclasses.replace(t, template=(t.template[0], ("hypothesis:", "hypothesis"))),
        "write 'hypothesis:' with its colon in MNLI sources",
    ),
}


def with_fixes(task: Task, fixes: frozenset[str]) -> Task:
    """`task` with those of `fixes` (names in FIXES) that concern it applied; others are ignored."""
    unknown = sorted(fixes - FIXES.keys())
    if unknown:
        raise ValueError(f"unknown reference fixes {unknown}: choose from {sorted(FIXES)}")
    applied = frozenset(name for name in fixes if FIXES[name].task == task.name)
    for name in sorted(applied):
        task = FIXES[name].apply(task)
    return dataclasses.replace(task, fixes=task.fixes | applied)
