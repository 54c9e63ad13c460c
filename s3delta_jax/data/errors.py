"""The data package's errors: bad rows are reported with the file and line they came from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from s3delta_jax.errors import UserError


class InvalidRowError(UserError, ValueError):
    """One row does not fit its task (missing field, bad label); raised without a location.

    The readers in `sources.py` catch it and re-raise a `DataFormatError` that names the file and
    line, so task code never needs to know where a row came from.
    """


class DataFormatError(UserError, ValueError):
    """A data file is malformed; the message is one line: `<file>:<line>: <problem>`."""

    @classmethod
    def at(cls, location: str, problem: str) -> DataFormatError:
        """`location` is e.g. `path/train.tsv:17`; `problem` says what is wrong (and the fix)."""
        return cls(f"{location}: {' '.join(problem.split())}")


class MissingDataError(UserError, FileNotFoundError):
    """A data directory or file that is not there; the message names the path and what was looked for."""


class TooFewExamplesError(UserError, ValueError):
    """A data file or split without enough rows for the run (a header-only file, a tiny validation split)."""


def shorten(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for one-line error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def located(location: str) -> Iterator[None]:
    """Turns an InvalidRowError raised inside the block into a DataFormatError at `location`."""
    try:
        yield
    except InvalidRowError as e:
        raise DataFormatError.at(location, str(e)) from None
