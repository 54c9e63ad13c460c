"""The authors' peer of step_cost.py: their PyTorch S3Delta step (thunlp/S3Delta) on the same shape.

`../shared/tools/authors_step.py` (outside the project) runs their own `s3deltaTrainer.train_step`
on a random-weight T5 of a preset shape; this module runs it as a subprocess, with the Python of
their environment, and reads its JSON. Nothing of the authors' code is in the project: the
checkout and its virtualenv are set up as that tool's docstring says (their repository at commit
c8fbd09 in /tmp/authors/S3Delta, a venv with torch and transformers 4.21.3 in /tmp/authors/venv).

Our steps and their modes:

    retrain          retrain_budget  re-training a structure at the budget of the S3PET-M space (ours: a
                                     greedy pick from random p; theirs: get_sparse_structure from random alphas)
    first_order      first_order     DARTS first order
    second_order_fd  second_order    the reference's search step (Adam virtual step, finite difference)

Their steps run after ours, one process per mode, sequentially timed (not in turns with ours), with
as many torch threads as this process may use CPUs (a `taskset` carries over to them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from step_cost_setup import Case

TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "authors_step.py"
OUR_STEP_OF_MODE = {"retrain_budget": "retrain", "first_order": "first_order", "second_order": "second_order_fd"}
SHAPES = ("t5-small", "t5-base", "t5-large")  # the tool's T5 shapes
SETUP_HINT = ("pass --authors-peer PATH, a checkout of thunlp/S3Delta (commit c8fbd09) set "
              "up as the docstring of ../shared/tools/authors_step.py says, to time their PyTorch step on this shape")


def unsupported(case: Case) -> str | None:
    """Why the tool cannot run `case`'s shape, or None: it builds whole t5-* models in float32 on the
    S3PET-M space (their mix_low_rank.json) at a relative budget."""
    if case.model not in SHAPES:
        return f"the authors' tool has t5-small/base/large shapes only, not {case.model!r}"
    if case.num_layers is not None:
        return "the authors' tool builds the model's full depth (drop --num-layers)"
    if case.space != "s3pet_mix":
        return f"the authors' tool searches S3PET-M (s3pet_mix) only, not {case.space_name}"
    if case.dtype != "float32":
        return "the authors' tool runs float32 only"
    if case.budget_ratio_or_count >= 1:
        return "the authors' tool takes a budget ratio (< 1), not a parameter count"
    return None


def their_modes(case: Case) -> list[str]:
    """Their modes of the case's steps: always the re-training step, and the search steps measured."""
    return [mode for mode, ours in OUR_STEP_OF_MODE.items() if ours == "retrain" or ours in case.estimators]


def command(case: Case, python: str, json_path: str, tool: Path = TOOL) -> list[str]:
    """The tool's command line for `case`'s shape, batch, dropout, budget, steps and warm-up."""
    threads = len(os.sched_getaffinity(0))
    return [python, str(tool), "--mode", ",".join(their_modes(case)), "--model", case.model,
            "--batch-size", str(case.batch_size), "--source-length", str(case.source_length),
            "--target-length", str(case.target_length), "--dropout", repr(case.dropout_rate),
            "--budget", repr(case.budget_ratio_or_count), "--steps", str(case.steps), "--warmup", str(case.warmup),
            "--threads", str(threads), "--json", json_path]


def default_python(checkout: str) -> str:
    """The venv next to the checkout, as the tool's set-up makes it (/tmp/authors/{S3Delta,venv})."""
    return os.path.join(os.path.dirname(os.path.abspath(checkout)), "venv", "bin", "python")


def measure_authors(case: Case, checkout: str, python: str | None = None, tool: Path = TOOL) -> dict[str, Any]:
    """Their steps on `case`: {'steps': {our step name: their result, with median_step_seconds}, ...},
    or {'skipped': reason} / {'failed': reason} (the tool's own messages go to stderr)."""
    python = python or default_python(checkout)
    reason = unsupported(case)
    if reason is None and not tool.is_file():
        reason = f"{tool} is not there"
    if reason is None and not os.path.isfile(python):
        reason = f"no Python at {python}: set up their venv (see {tool.name}'s docstring) or pass --authors-python"
    if reason is not None:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory() as tmp:
        argv = command(case, python, os.path.join(tmp, "authors.json"), tool)
        started = time.perf_counter()
        completed = subprocess.run(argv, env={**os.environ, "S3DELTA_REPO": os.path.abspath(checkout)},
                                   stdout=sys.stderr, check=False)
        if completed.returncode != 0:
            return {"failed": f"{tool.name} exited with status {completed.returncode} (its messages are above)",
                    "command": " ".join(argv)}
        with open(argv[-1]) as f:
            report = json.load(f)
    return {
        "command": " ".join(argv),
        "wall_seconds": time.perf_counter() - started,
        "versions": {"torch": report["torch"], "transformers": report["transformers"], "python": report["python"]},
        "affinity": report["affinity"],
        "load_average": report["load_average"],
        "steps": {OUR_STEP_OF_MODE[result["mode"]]: result for result in report["results"]},
    }


def compare(authors: dict[str, Any], our_seconds: dict[str, float]) -> dict[str, Any]:
    """ours / theirs median step time per step both measured, and their search / re-train ratios
    (to set beside ours)."""
    theirs = {step: result["median_step_seconds"] for step, result in authors["steps"].items()}
    return {
        "ours_over_authors_time": {step: our_seconds[step] / seconds for step, seconds in theirs.items()
                                   if step in our_seconds},
        "authors_search_over_retrain_time": {step: seconds / theirs["retrain"] for step, seconds in theirs.items()
                                             if step != "retrain"},
    }
