"""The output directory of an export (refused when it holds anything, written whole or not at all) and
the report of what went into it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator

from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.export.refusal import ExportError, describe


def check_output_dir(path: str) -> None:
    """Raises ExportError unless `path` is absent or an empty directory."""
    if os.path.isfile(path):
        raise ExportError(f"--out {path} is a file: pass a new or empty directory")
    if os.path.isdir(path) and os.listdir(path):
        raise ExportError(f"--out {path} exists and is not empty: pass a new or empty directory (nothing was written)")


@contextlib.contextmanager
def staged_output(path: str) -> Iterator[str]:
    """Yields a temporary directory beside `path`; when the block ends without an error it becomes `path`,
    otherwise it is removed, so a failed export leaves `path` as it was."""
    check_output_dir(path)
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if os.path.isdir(target):
        os.rmdir(target)
    os.replace(staging, target)


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What an export wrote: the directory, its files, and the deltas it left out (`allow_partial`)."""

    directory: str
    files: list[str]
    left_out: list[Candidate]

    @property
    def warning(self) -> str | None:
        """One line naming what was left out, or None."""
        if not self.left_out:
            return None
        return (f"warning: left out {len(self.left_out)} deltas (--allow_partial): {describe(self.left_out)}; "
                "the exported model differs from the re-trained one there")
