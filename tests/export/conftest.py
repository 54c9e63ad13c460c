"""Fixtures of the export tests: the tiny random T5 and BERT, each saved once as a Hugging Face checkpoint."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from export_cases import SPIECE, saved_backbone  # noqa: E402


@pytest.fixture(scope="session")
def t5_backbone(tmp_path_factory):
    """A tiny random T5 saved in a directory; its tokenizer is the shared spiece.model where present."""
    return saved_backbone("t5", str(tmp_path_factory.mktemp("t5-base-model")), str(SPIECE) if SPIECE.is_file() else "bytes")


@pytest.fixture(scope="session")
def bert_backbone(tmp_path_factory):
    """A tiny random BERT saved in a directory, with MiniLM's tokenizer."""
    return saved_backbone("bert", str(tmp_path_factory.mktemp("bert-base-model")), "minilm-l6")
