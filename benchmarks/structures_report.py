"""Markdown tables of a structures benchmark report (structures.py builds the report's dict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from structures_stats import SPLITS

LABELS = {
    "searched": "S3PET (searched)", "random": "Random (same budget)", "bitfit": "BitFit", "lnfit": "LNFit",
    "lora_qv_r1": "LoRA r=1 q,v", "adapter_lr": "Adapter-LR", "peft_lora_qv_r1": "PEFT LoRA r=1 q,v",
    "peft_adalora": "PEFT AdaLoRA (same budget)", "linear_probe": "Linear probe (head only)",
}
SPLIT_LABELS = {"val": "val", "test": "test", "full_test": "full test"}


def label(method: str) -> str:
    return LABELS.get(method, method)


def budget_text(budget: float | int | None) -> str:
    return "-" if budget is None else f"{budget:g}"


def mean_std_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "n/a"
    return f"{cell['mean']:.2f}" if cell["std"] is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def difference_text(cell: dict[str, Any] | None) -> str:
    """"mean [ci_low, ci_high]" of a paired difference."""
    if cell is None:
        return "n/a"
    if cell["ci_low"] is None:
        return f"{cell['mean']:+.2f} (n=1)"
    return f"{cell['mean']:+.2f} [{cell['ci_low']:+.2f}, {cell['ci_high']:+.2f}]"


def summary_table(rows: Sequence[dict], metrics: Sequence[str], backbone_params: int) -> str:
    columns = [f"{SPLIT_LABELS[s]} {m}" for s in SPLITS for m in metrics] + [f"val {metrics[0]}"]
    lines = ["| method | budget | seeds | trainable params | per 10k | " + " | ".join(columns) + " |",
             "|---" * (5 + len(columns)) + "|"]
    for row in rows:
        params = row["trainable_params"]["mean"]
        cells = [mean_std_text(row[s] and row[s][m]) for s in SPLITS for m in metrics]
        cells.append(mean_std_text(row["val"] and row["val"][metrics[0]]))
        seeds = len(row["seeds"])
        seeds_text = f"{seeds}" if row["runs"] == seeds else f"{seeds} ({row['runs']} runs)"
        lines.append(f"| {label(row['method'])} | {budget_text(row['budget'])} | {seeds_text} | "
                     f"{params:,.0f} | {1e4 * params / backbone_params:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    columns = [f"{SPLIT_LABELS[s]} {m}" for s in SPLITS for m in metrics] + [f"val {metrics[0]}"]
    lines = ["| budget | searched minus | " + " | ".join(columns) + f" | test {metrics[0]} per seed |",
             "|---" * (3 + len(columns)) + "|"]
    for row in rows:
        cells = [difference_text(row[s] and row[s][m]) for s in SPLITS for m in metrics]
        cells.append(difference_text(row["val"] and row["val"][metrics[0]]))
        per_seed = ", ".join(f"{d:+.2f}" for d in row["test"][metrics[0]]["per_seed"]) if row["test"] else "n/a"
        lines.append(f"| {budget_text(row['budget'])} | {label(row['versus'])} | " + " | ".join(cells)
                     + f" | {per_seed} |")
    return "\n".join(lines)


def parity_text(parity: dict[str, Any] | None) -> str:
    if parity is None:
        return "Parity (our LoRA r=1 q,v against PEFT's): not measured (needs both on a common seed)."
    verdict = "within" if parity["within_tolerance"] else "OUTSIDE"
    return (f"Parity, test {parity['metric']} over seeds {parity['seeds']}: ours {parity['ours_mean']:.2f}, "
            f"PEFT {parity['peft_mean']:.2f}, difference {parity['difference']:+.2f} ({verdict} ±{parity['tolerance']}).")


def agreement_text(agreement: dict[str, dict[str, Any] | None]) -> str:
    """One line per budget: how alike the searches of different seeds came out."""
    lines = []
    for budget, cell in agreement.items():
        if cell is None:
            lines.append(f"Searches at budget {budget}: fewer than two seeds finished, no agreement to measure.")
            continue
        lines.append(
            f"Searches at budget {budget} across seeds ({len(cell['pairs'])} pairs): Spearman correlation of "
            f"the gate probabilities {min(cell['spearman']):+.2f} to {max(cell['spearman']):+.2f} (mean "
            f"{cell['spearman_mean']:+.2f}); chosen modules shared (Jaccard) {min(cell['jaccard']):.2f} to "
            f"{max(cell['jaccard']):.2f} (mean {cell['jaccard_mean']:.2f}).")
    return "\n".join(lines)


def code_text(versions: Sequence[dict[str, Any]]) -> str:
    """One line: which commits finished how many of the runs."""
    parts = []
    for version in versions:
        if version["commit"] is None:
            name = "not recorded"
        else:
            name = version["commit"][:10] + (" with uncommitted changes" if version["uncommitted_changes"] else "")
        parts.append(f"{name} ({version['runs']} run{'' if version['runs'] == 1 else 's'})")
    return "Code that finished the runs: " + ", ".join(parts) + "."


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: methods, searched-minus-others with 95% CIs paired over seeds, parity,
    and how alike the searches of different seeds came out."""
    metrics = report["metrics"]
    parts = [
        f"Test metrics at the best validation evaluation, mean ± std over seeds (a method with several runs "
        f"on a seed, such as random draws, counts as their mean there); test = the paper's test half of one "
        f"seed's split, full test = the task's test file ({report['full_test_rows']} rows).",
        "",
        summary_table(report["summary"], metrics, report["backbone"]["num_params"]),
        "",
        "Searched minus each method, paired over seeds: mean [95% CI, t distribution].",
        "",
        differences_table(report["differences"], metrics),
        "",
        parity_text(report["parity"]),
    ]
    if report["search_agreement"]:
        parts += ["", agreement_text(report["search_agreement"])]
    if report["code_versions"]:
        parts += ["", code_text(report["code_versions"])]
    if report["missing"]:
        parts += ["", f"Not finished ({len(report['missing'])}): {', '.join(report['missing'])}"]
    return "\n".join(parts)
