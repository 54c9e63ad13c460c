"""Helpers of the tests that run run_search.py / run_retrain.py as a user does (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"
SEARCH_OUTPUTS = ("config.json", "metrics.jsonl", "structure.json", "gates.tsv", "heatmap.png", "results.json")


def command(program: str, config: str, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / program), f"--config={ROOT / config}", f"--workdir={workdir}", *extra]


def run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(err: str) -> str:
    """The only line of `err`, which must be a one-line error (no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]
