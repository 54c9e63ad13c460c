"""files.json: what the files of a checkpoint step were when it was written, and the check against it.

Orbax reads a flipped bit of array data without noticing, and a truncated file makes it fail deep
inside tensorstore; comparing every file's size and CRC-32 with files.json first names the damaged
file in one line, without asking orbax to read it.
"""

from __future__ import annotations

import json
import os
import zlib

from s3delta_jax.train.outputs import write_json

FILES = "files.json"


def write_file_table(step_dir: str) -> None:
    """Writes `step_dir`/files.json for a step orbax has finished."""
    write_json(os.path.join(step_dir, FILES), _file_table(step_dir))


def _file_table(step_dir: str) -> dict[str, list[int]]:
    """{path relative to `step_dir`: [size, CRC-32]} of every file of a step but files.json."""
    table = {}
    for folder, _, names in os.walk(step_dir):
        for name in sorted(names):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, step_dir)
            if relative != FILES:
                table[relative] = [os.path.getsize(path), _crc32(path)]
    return dict(sorted(table.items()))


def file_problem(step_dir: str) -> str | None:
    """What is wrong with a step's files compared with its files.json (None: all as written, or a step
    without files.json, which orbax then reads unchecked)."""
    try:
        with open(os.path.join(step_dir, FILES)) as f:
            expected = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"its {FILES} is unreadable: {type(error).__name__}"
    for relative, (size, crc) in expected.items():
        path = os.path.join(step_dir, relative)
        if not os.path.isfile(path):
            return f"{relative} is missing"
        if os.path.getsize(path) != size:
            return f"{relative} has {os.path.getsize(path)} of its {size} bytes"
        if _crc32(path) != crc:
            return f"{relative} is corrupt: its checksum differs from the one written with it"
    return None


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc
