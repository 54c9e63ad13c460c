"""The benchmark's figures (matplotlib, Agg): metric against trainable parameters, and the p-heatmaps.

  * `plot_metric_vs_params`: paper Figure 2: one panel per scored split, the primary metric (mean
    over seeds, error bars one std) against trainable parameters (mean over seeds, log axis); a line
    through the budgets for methods with a budget, one point for the others, and a dashed horizontal
    line (its std a band) for a method with no trainable parameters outside the head (the linear probe).
  * `tile_heatmaps`: the searched structures' heatmap.png files (run_search writes one per search),
    one row per seed and one column per budget.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from structures_report import SPLIT_LABELS, label  # noqa: E402
from structures_stats import SPLITS  # noqa: E402


def plot_metric_vs_params(summary: Sequence[dict], metric: str, path: str, title: str) -> None:
    splits = [s for s in SPLITS if any(row[s] for row in summary)]
    figure, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 4.8), squeeze=False)
    for axis, split in zip(axes[0], splits):
        for method in dict.fromkeys(row["method"] for row in summary):
            rows = sorted((r for r in summary if r["method"] == method and r[split]),
                          key=lambda r: r["trainable_params"]["mean"])
            if not rows:
                continue
            x = [r["trainable_params"]["mean"] for r in rows]
            y = [r[split][metric]["mean"] for r in rows]
            errors = [r[split][metric]["std"] or 0.0 for r in rows]
            if x == [0]:  # no point on a log axis: a floor across the panel
                line = axis.axhline(y[0], linestyle="--", linewidth=1, label=label(method))
                axis.axhspan(y[0] - errors[0], y[0] + errors[0], color=line.get_color(), alpha=0.1)
                continue
            axis.errorbar(x, y, yerr=errors, marker="o", capsize=3, linestyle="-" if len(rows) > 1 else "none",
                          label=label(method))
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters (head excluded)")
        axis.set_ylabel(f"{SPLIT_LABELS[split]} {metric}")
        axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def tile_heatmaps(heatmaps: dict[tuple[int, float | int], str], path: str) -> int:
    """Tiles {(seed, budget): heatmap.png path} (missing files left blank); returns the count tiled."""
    present = {key: p for key, p in heatmaps.items() if os.path.isfile(p)}
    if not present:
        return 0
    seeds = sorted({seed for seed, _ in heatmaps})
    budgets = sorted({budget for _, budget in heatmaps})
    figure, axes = plt.subplots(len(seeds), len(budgets), figsize=(6 * len(budgets), 4 * len(seeds)), squeeze=False)
    for i, seed in enumerate(seeds):
        for j, budget in enumerate(budgets):
            axis = axes[i][j]
            axis.axis("off")
            if (seed, budget) in present:
                axis.imshow(plt.imread(present[(seed, budget)]))
                axis.set_title(f"seed {seed}, budget {budget:g}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return len(present)
