"""Reading rows from local files, each with its location ("path:line") for error messages.

Formats by extension: .tsv (tab-separated), .csv (comma-separated), .jsonl / .json (one JSON object a
line, as `Dataset.to_json` writes), .parquet. Delimited files are read with CSV quoting by default
(Hugging Face exports: a field may be "quoted", with "" for a quote inside); `quoted=False` reads
GLUE's original files, where quotes are plain characters.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from s3delta_jax.data.errors import DataFormatError

LocatedRow = tuple[str, dict[str, Any]]  # ("path:line", row)
EXTENSIONS = ("parquet", "jsonl", "json", "csv", "tsv")
_DELIMITERS = {".tsv": "\t", ".txt": "\t", ".csv": ","}


def read_rows(path: Path, *, quoted: bool = True, column_names: Sequence[str] | None = None) -> Iterator[LocatedRow]:
    """Rows of `path` as dicts, with their locations; raises DataFormatError on a malformed row.

    column_names: for delimited files without a header row (GLUE's CoLA train/dev).
    """
    suffix = path.suffix.lower()
    if suffix in _DELIMITERS:
        return read_delimited(path, _DELIMITERS[suffix], quoted=quoted, column_names=column_names)
    if suffix in (".jsonl", ".json"):
        return read_json_lines(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataFormatError.at(str(path), f"unknown file type {suffix!r}: expected one of {EXTENSIONS}")


def read_delimited(
    path: Path, delimiter: str, *, quoted: bool, column_names: Sequence[str] | None = None
) -> Iterator[LocatedRow]:
    """Delimited rows; the first line is the header unless `column_names` are given. A row whose
    field count differs from the header's, or a broken quote, is an error at its first line."""
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        header = list(column_names) if column_names is not None else _next_record(reader, path)
        if header is None:
            raise DataFormatError.at(f"{path}:1", "empty file: expected a header row")
        while True:
            line = reader.line_num + 1
            record = _next_record(reader, path)
            if record is None:
                return
            if not record:  # blank line
                continue
            if len(record) != len(header):
                raise DataFormatError.at(
                    f"{path}:{line}",
                    f"broken row: {len(record)} fields where the header has {len(header)} "
                    f"({', '.join(header)}); check for a stray tab or an unbalanced quote",
                )
            yield f"{path}:{line}", dict(zip(header, record))


def _next_record(reader, path: Path) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        raise DataFormatError.at(f"{path}:{reader.line_num}", f"broken row: {e}") from None


def read_json_lines(path: Path) -> Iterator[LocatedRow]:
    """One JSON object per non-blank line."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"broken row: not valid JSON ({e.msg} at column {e.colno})"
                raise DataFormatError.at(f"{path}:{number}", problem) from None
            if not isinstance(row, dict):
                problem = f"broken row: expected a JSON object, got {type(row).__name__}"
                raise DataFormatError.at(f"{path}:{number}", problem)
            yield f"{path}:{number}", row


def read_parquet(path: Path) -> Iterator[LocatedRow]:
    """Parquet rows; locations count rows from 0 ("path: row 12")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataFormatError.at(str(path), f"not a readable Parquet file ({e})") from None
    for number, row in enumerate(rows):
        yield f"{path}: row {number}", row
