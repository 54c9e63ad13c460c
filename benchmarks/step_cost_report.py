"""The report of step_cost.py: where the numbers come from, and a plain-text table of each case
(the JSON's keys are explained in benchmarks/README.md)."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax
import optax


def machine() -> dict[str, Any]:
    """Where the numbers come from (the load average tells whether the machine was shared)."""
    device = jax.local_devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_1_5_15_min": list(os.getloadavg()),
        "jax_backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
    }


def _cell(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(scale * value, fmt)


def format_case(result: dict[str, Any]) -> str:
    """A plain-text table of one case: re-train, each search step with its ratios, and the peers."""
    model, retrain = result["model"], result["retrain"]
    lines = [
        (f"== {result['label']}: {model['candidates']} candidates ({model['space']}), "
         f"budget {model['budget_params']} params, "
         f"structure {retrain['modules']} modules / {retrain['trainable_params']} params"),
        (f"{'step':<40}{'median ms':>10}{'compile s':>10}{'XLA MiB':>9}{'temp MiB':>9}{'peak MiB':>9}"
         f"{'time x':>8}{'compile x':>10}{'mem x':>7}{'temp x':>8}{'zeta %':>8}"),
    ]
    mib = 1 / 2**20

    def row(name: str, m: dict[str, Any]) -> str:
        """mem x: the measured memory ratio, or the compiled one where the steps did not run."""
        memory = m["compiled_memory"] or {}
        memory_ratio = m.get("search_over_retrain_memory", m.get("search_over_retrain_compiled_memory"))
        return (f"{name:<40}{_cell(m.get('median_step_seconds'), '.1f', 1e3):>10}"
                f"{_cell(m['compile_seconds'], '.1f'):>10}"
                f"{_cell(memory.get('total'), '.1f', mib):>9}{_cell(memory.get('temp'), '.1f', mib):>9}"
                f"{_cell(m.get('device_peak_bytes'), '.1f', mib):>9}"
                f"{_cell(m.get('search_over_retrain_time'), '.2f'):>8}"
                f"{_cell(m.get('search_over_retrain_compile_time'), '.2f'):>10}"
                f"{_cell(memory_ratio, '.2f'):>7}"
                f"{_cell(m.get('search_over_retrain_temp_memory'), '.2f'):>8}"
                f"{_cell(m.get('zeta_share_of_step'), '.2f', 100):>8}")

    lines.append(row("re-train (structure)", retrain))
    lines.extend(row(f"search {name}", m) for name, m in result["search"].items())
    full_depth = result["retrain_full_depth"]
    lines.append(f"re-train (one module, full depth: {full_depth['candidate']}): "
                 f"{_cell(full_depth.get('median_step_seconds'), '.1f', 1e3)} ms, compile {full_depth['compile_seconds']:.1f} s"
                 + "".join(f"; {name} {m['search_over_full_depth_retrain_time']:.2f}x it"
                           for name, m in result["search"].items() if "search_over_full_depth_retrain_time" in m))
    if result["compile_only"]:
        lines.append(f"Memory: {result['memory_note']}")
        return "\n".join(lines)
    lines.append(f"zeta: {1e6 * result['zeta']['seconds_per_solve']:.1f} us per solve, "
                 f"{result['zeta']['solves_per_step']} per search step. Memory: {result['memory_note']}")
    if "profile" in result:
        profile = result["profile"]
        lines.append("pieces (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in profile["piece_seconds"].items()))
        lines.append("sum of pieces (ms): " + ", ".join(
            f"{k} {1e3 * v:.1f}" for k, v in profile["sum_of_pieces_seconds"].items()))
        lines.append(f"finite-difference pair batched with vmap / as two passes: "
                     f"{profile['hvp_fd_vmapped_over_two_passes']:.2f}")
        lines.append(f"exact Hessian term linearized with grad_delta against the jvp: max |difference| "
                     f"{profile['hvp_linearized_max_abs_difference']:.2e} (largest entry {profile['hvp_exact_max_abs']:.2e})")
    peer = result.get("peer")
    if peer is not None and "skipped" in peer:
        lines.append(f"PEFT peer skipped: {peer['skipped']}")
    elif peer is not None:
        lines.append(f"PEFT LoRA r8 q,v (torch {peer['peft']['device']}, {peer['peft']['torch_threads']} threads): "
                     f"{1e3 * peer['peft']['median_step_seconds']:.1f} ms; ours, same structure: "
                     f"{1e3 * peer['ours_lora_qv_r8']['median_step_seconds']:.1f} ms; "
                     f"ours/PEFT {peer['ours_over_peft_time']:.2f}")
    lines.append(format_authors_peer(result["authors_peer"]))
    return "\n".join(lines)


def format_authors_peer(authors: dict[str, Any]) -> str:
    """One line: the authors' s/step beside ours, or why they were not run."""
    if "skipped" in authors:
        return f"authors' peer skipped: {authors['skipped']}"
    if "failed" in authors:
        return f"authors' peer failed: {authors['failed']}"
    threads = {result["torch_threads"] for result in authors["steps"].values()}
    steps = ", ".join(
        f"{step} {result['median_step_seconds']:.2f} s (ours/theirs "
        f"{_cell(authors['ours_over_authors_time'].get(step), '.2f')})"
        for step, result in authors["steps"].items())
    ratios = ", ".join(f"{step} {value:.2f}" for step, value in authors["authors_search_over_retrain_time"].items())
    return (f"authors' S3Delta (torch {authors['versions']['torch']}, {'/'.join(map(str, sorted(threads)))} "
            f"thread(s)): {steps}; their search / re-train: {ratios}")


