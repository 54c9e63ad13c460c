"""Files a run writes into its workdir: config.json, metrics.jsonl, gates.tsv, heatmap.png, results.json.

Only process 0 writes them (see `is_writer`); JSON files are written to a temporary name and renamed,
so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Sequence

import jax
import numpy as np


def is_writer() -> bool:
    """True on the one process that writes logs, plots and JSON outputs."""
    return jax.process_index() == 0


def write_json(path: str, obj: Any) -> None:
    """Atomically writes `obj` as indented JSON."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: str, resume_step: int | None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)
        elif os.path.exists(path):
            os.remove(path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    return value


def write_gates_tsv(path: str, candidates: Sequence[Any], alpha: np.ndarray, p: np.ndarray, chosen: np.ndarray) -> None:
    """Every candidate: index, path, type, size, alpha, p, chosen (the reference's final_alphas.txt)."""
    with open(path, "w") as f:
        f.write("index\tpath\ttype\tsize\talpha\tp\tchosen\n")
        for c in candidates:
            i = c.index
            f.write(f"{i}\t{'/'.join(c.position.path)}\t{c.key}\t{c.size}\t{alpha[i]:.6g}\t{p[i]:.6g}\t{int(chosen[i])}\n")


_INDEXED = re.compile(r"^(.*)_(\d+)$")


def heatmap_cells(candidates: Iterable[Any], p: np.ndarray) -> dict[str, dict[tuple[str, str], float]]:
    """Groups p by panel (top-level module, e.g. encoder/decoder), row (position type) and column (layer).

    The layer is the first path component named `<name>_<i>` (T5's `block_i`); the row is the rest of
    the path below it plus the delta type, e.g. `layer_0/SelfAttention/q:lora`. Candidates outside any
    layer (final norms) go to the column `final`.
    """
    panels: dict[str, dict[tuple[str, str], float]] = {}
    for c in candidates:
        path = c.position.path
        column, row_parts = "final", path[1:]
        for depth, name in enumerate(path):
            match = _INDEXED.match(name)
            if match:
                column, row_parts = match.group(2), path[depth + 1:]
                break
        row = "/".join(row_parts) + f":{c.key}"
        panels.setdefault(path[0], {})[(row, column)] = float(p[c.index])
    return panels


def write_heatmap(path: str, candidates: Sequence[Any], p: np.ndarray, title: str) -> None:
    """heatmap.png: p per layer x position type, one panel per stack (the paper's Figures 3 and 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = heatmap_cells(candidates, p)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 8), squeeze=False)
    for ax, (panel, cells) in zip(axes[0], panels.items()):
        rows = list(dict.fromkeys(r for r, _ in cells))
        columns = sorted({c for _, c in cells}, key=lambda c: (c == "final", int(c) if c.isdigit() else 0))
        grid = np.full((len(rows), len(columns)), np.nan)
        for (r, c), value in cells.items():
            grid[rows.index(r), columns.index(c)] = value
        image = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(columns)), columns, fontsize=6)
        ax.set_yticks(range(len(rows)), rows, fontsize=6)
        ax.set_title(f"{panel}: p per layer")
        ax.set_xlabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.6, label="p")
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
