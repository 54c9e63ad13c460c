"""The summary a program prints when a phase ends: the best validation metrics, the structure's size
and the files it wrote."""

from __future__ import annotations

import os
import sys
from typing import Sequence, TextIO

from s3delta_jax.train.loop import PhaseResult
from s3delta_jax.train.progress import format_seconds


def summary_lines(result: PhaseResult, paths: Sequence[str] = (), modules: int | None = None,
                  trainable_params: int | None = None, backbone_params: int | None = None) -> list[str]:
    """The final summary of a phase: its best validation metrics and step, the structure's size (when
    given) and the output files."""
    metrics = ", ".join(f"{name} {value:.4g}" for name, value in result.best_metrics.items()) or "no evaluation"
    resumed = f", resumed from step {result.start_step}" if result.start_step else ""
    lines = [f"{result.phase} finished in {format_seconds(result.seconds)}{resumed}: best validation {metrics} "
             f"at step {result.best_step} of {result.total_steps}"]
    if trainable_params is not None:
        size = f"structure: {modules} modules, " if modules is not None else "structure: "
        ratio = (f" = {1e4 * trainable_params / backbone_params:.3g} per ten-thousand of the backbone's "
                 f"{backbone_params:,}") if backbone_params else ""
        lines.append(f"{size}{trainable_params:,} trainable parameters{ratio}")
    lines += [f"wrote {os.path.abspath(path)}" for path in paths]
    return lines


def write_summary(lines: Sequence[str], stream: TextIO | None = None) -> None:
    """Prints the summary lines (to stdout by default)."""
    stream = stream or sys.stdout
    stream.write("".join(f"{line}\n" for line in lines))
    stream.flush()
