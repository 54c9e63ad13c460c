"""Shared fixtures of the data tests: the shared data folder, the real MRPC files, a small file writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from the repository root: the team's public data (never copied into the repo)."""
    return Path(__file__).parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def mrpc_dir(shared_data: Path) -> Path:
    """The Hugging Face export of GLUE MRPC (train/validation/test.tsv)."""
    path = shared_data / "glue" / "MRPC"
    if not path.is_dir():
        pytest.skip(f"the shared MRPC data is not at {path}")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def write() -> Callable[[Path, str], Path]:
    """write(path, text) -> path: creates the file (and its folders) with UTF-8 `text`."""
    return _write
