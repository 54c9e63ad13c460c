"""Where a task's rows come from: its built-in generator, a local directory, or the Hugging Face hub.

Rows are plain dicts with Hugging Face field names and types (`Task.normalize_row`), whatever the
source. A local directory may hold, for split "validation" say:
  * Hugging Face exports: validation.{parquet,jsonl,json,csv,tsv} (MNLI: validation_matched.*);
    .tsv/.csv are CSV-quoted ("" escapes a quote), with a header of field names.
  * SuperGLUE's original files: val.jsonl (train.jsonl, test.jsonl), nested MultiRC/ReCoRD included.
  * GLUE's original files: dev.tsv (train.tsv, test.tsv; MNLI dev_matched.tsv) or Microsoft's MRPC
    files; recognised by dev.tsv / dev_matched.tsv / msr_paraphrase_train.txt being present.
Malformed rows raise DataFormatError naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from s3delta_jax.data.errors import MissingDataError, TooFewExamplesError, located
from s3delta_jax.data.files import EXTENSIONS, LocatedRow
from s3delta_jax.data.originals import flattened_rows, glue_original_file, is_glue_original_dir, read_glue_original
from s3delta_jax.data.tasks import Task, check_split
from s3delta_jax.hub import HubUnavailableError, resolve_offline

LOCAL_DATA_HINT = (
    "pass a local data directory (data_dir=...) holding GLUE/SuperGLUE's original files or Hugging Face "
    "exports (train/validation/test as .tsv/.csv/.jsonl/.parquet), or use the built-in task 'synthetic'"
)


def load_split(task: Task, split: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All rows of one split ("train", "validation" or "test") of `task`.

    Built-in tasks generate their rows; otherwise rows are read from `data_dir` when given, else
    from the Hugging Face hub (which fails within seconds, naming the local alternatives, when
    offline). Test rows may be unlabelled (label -1, as on the hub).
    """
    check_split(split)
    if task.row_generator is not None:
        return task.row_generator(split)
    if data_dir is not None:
        return _load_local(task, split, Path(data_dir))
    return _load_hub(task, split)


def _load_local(task: Task, split: str, directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        problem = "is a file, not a directory" if directory.exists() else "does not exist"
        raise MissingDataError(f"data directory {directory} {problem}: pass the directory that holds the "
                               f"split files of task {task.name!r} (data.path / data_dir)")
    hf_split = task.hf_split(split)
    what = f"{split} data of task {task.name!r}"
    if is_glue_original_dir(task.name, directory):
        path = _first_file([glue_original_file(task.name, hf_split, directory)], what)
        rows = read_glue_original(task.name, hf_split, path)
    else:
        stems = _stems(split, hf_split)
        path = _first_file([directory / f"{stem}.{ext}" for stem in stems for ext in EXTENSIONS], what)
        rows = flattened_rows(path)
    normalized = _normalized(task, rows, require_label=split != "test")
    if not normalized:
        raise TooFewExamplesError(f"no examples in {path} (the {what}): the file has no data rows; "
                                  "fill it or point the data directory at complete files")
    return normalized


def _stems(split: str, hf_split: str) -> list[str]:
    """File names (without extension) that may hold `split`, in order of preference."""
    return list(dict.fromkeys([hf_split, split] + (["val"] if split == "validation" else [])))


def _first_file(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise MissingDataError(
        f"no file with the {what} in {candidates[0].parent}: looked for {', '.join(p.name for p in candidates)}"
    )


def _load_hub(task: Task, split: str) -> list[dict[str, Any]]:
    if task.hf_path is None:
        raise MissingDataError(f"task {task.name!r} has no Hugging Face dataset: {LOCAL_DATA_HINT}")
    require_hub(task)
    import datasets

    hf_split = task.hf_split(split)
    dataset = datasets.load_dataset(task.hf_path, task.hf_config, split=hf_split)
    where = f"{task.hf_path}/{task.hf_config} {hf_split}"
    return _normalized(task, ((f"{where} row {i}", row) for i, row in enumerate(dataset)), split != "test")


def require_hub(task: Task) -> None:
    """Raises HubUnavailableError within seconds if `task`'s hub dataset cannot be reached."""
    settings = ", ".join(
        f"{name}={os.environ.get(name, 'unset')}" for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )
    message = (f"task {task.name!r} reads the Hugging Face dataset {task.hf_path}/{task.hf_config}, but the hub "
               f"is not reachable ({settings}): {LOCAL_DATA_HINT}.")
    if os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise HubUnavailableError(message)
    try:
        resolve_offline(task.hf_path, what="dataset")
    except HubUnavailableError:
        raise HubUnavailableError(message) from None


def _normalized(task: Task, rows: Iterable[LocatedRow], require_label: bool) -> list[dict[str, Any]]:
    out = []
    for location, row in rows:
        with located(location):
            out.append(task.normalize_row(row, require_label=require_label))
    return out
