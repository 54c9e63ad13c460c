"""Files a run writes into its workdir: config.json, metrics.jsonl, gates.tsv, heatmap.png, results.json.

Only process 0 writes them (see `is_writer`); JSON files are written to a temporary name and renamed,
so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

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
HEATMAP_CELL_INCHES = (0.32, 0.2)  # width, height of one cell
LABEL_FONT_SIZE = 6
CANNOT_ACT_GREY = "#9e9e9e"  # cells without a candidate (p = 0 is near white)


@dataclasses.dataclass(frozen=True)
class HeatmapPanel:
    """One stack (encoder, decoder, ...) of the heatmap: p[row, column] per position type x layer, NaN
    where there is no candidate (the delta type cannot act there), and which cells were chosen."""

    name: str
    rows: list[str]
    columns: list[str]
    p: np.ndarray  # f64[rows, columns]
    chosen: np.ndarray  # bool[rows, columns]


def heatmap_panels(candidates: Sequence[Any], p: np.ndarray, chosen: np.ndarray | None = None) -> list[HeatmapPanel]:
    """Groups p (and the chosen mask, bool[candidates]) by panel, row and column.

    The panel is the top-level module (encoder / decoder); the column is the layer, the first path
    component named `<name>_<i>` (T5's `block_i`); the row is the rest of the path below it plus the
    delta type, e.g. `layer_0/SelfAttention/q:lora`. Candidates outside any layer (final norms) go to
    the column `final`.
    """
    cells: dict[str, dict[tuple[str, str], Any]] = {}
    for c in candidates:
        path = c.position.path
        column, row_parts = "final", path[1:]
        for depth, name in enumerate(path):
            match = _INDEXED.match(name)
            if match:
                column, row_parts = match.group(2), path[depth + 1:]
                break
        cells.setdefault(path[0], {})[("/".join(row_parts) + f":{c.key}", column)] = c.index
    panels = []
    for name, indices in cells.items():
        rows = list(dict.fromkeys(r for r, _ in indices))
        columns = sorted({c for _, c in indices}, key=lambda c: (c == "final", int(c) if c.isdigit() else 0))
        grid, picked = np.full((len(rows), len(columns)), np.nan), np.zeros((len(rows), len(columns)), bool)
        for (r, c), index in indices.items():
            grid[rows.index(r), columns.index(c)] = p[index]
            picked[rows.index(r), columns.index(c)] = chosen is not None and bool(chosen[index])
        panels.append(HeatmapPanel(name, rows, columns, grid, picked))
    return panels


def heatmap_figure(candidates: Sequence[Any], p: np.ndarray, title: str, chosen: np.ndarray | None = None):
    """The heatmap as a matplotlib Figure: p per layer x position type, one panel per stack (the paper's
    Figures 3 and 5); grey cells: the delta type cannot act there; black dots: the chosen modules. Each
    panel is as wide as its labels and cells need, so the panels' labels never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = heatmap_panels(candidates, p, chosen)
    label_inches = [max(map(len, panel.rows)) * LABEL_FONT_SIZE * 0.62 / 72 for panel in panels]
    widths = [len(panel.columns) * HEATMAP_CELL_INCHES[0] + label for panel, label in zip(panels, label_inches)]
    height = max(len(panel.rows) for panel in panels) * HEATMAP_CELL_INCHES[1] + 2.0
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.5, height), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": widths})
    cmap = plt.get_cmap("Blues").with_extremes(bad=CANNOT_ACT_GREY)
    for ax, panel in zip(axes[0], panels):
        image = ax.imshow(np.ma.masked_invalid(panel.p), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0)
        rows, columns = np.nonzero(panel.chosen)
        ax.scatter(columns, rows, s=9, c="black", edgecolors="white", linewidths=0.4)
        ax.set_xticks(range(len(panel.columns)), panel.columns, fontsize=LABEL_FONT_SIZE)
        ax.set_yticks(range(len(panel.rows)), panel.rows, fontsize=LABEL_FONT_SIZE)
        ax.set_title(f"{panel.name}: p per layer", fontsize=9)
        ax.set_xlabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.6, label="p")
    legend = [Patch(color=CANNOT_ACT_GREY, label="the delta type cannot act here")]
    if chosen is not None:
        legend.insert(0, Line2D([], [], marker="o", linestyle="", color="black", label="chosen"))
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def write_heatmap(path: str, candidates: Sequence[Any], p: np.ndarray, title: str,
                  chosen: np.ndarray | None = None) -> None:
    """heatmap.png of `heatmap_figure` (chosen: bool[candidates], the selected structure)."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(candidates, p, title, chosen)
    fig.savefig(path, dpi=110)
    plt.close(fig)
