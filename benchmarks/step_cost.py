"""What one S3Delta search step costs against one re-training step: time, memory, compile time.

    python benchmarks/step_cost.py --preset cpu-quick --json out.json

For each case (a T5 shape with random weights, batch size, source/target lengths, dtype) this
measures, in one process:
  * the re-training step of a structure at the budget (a greedy selection from random p over the
    search space, so a mix of module types spread over the model): clipped AdamW on its deltas;
  * the search step over the whole space with each estimator (first_order, second_order_fd,
    second_order_exact): one D_delta and one D_alpha batch of the same size, reference settings;
and for each: the median step time after warm-up, the compile time (trace + lower + XLA compile),
XLA's compiled memory analysis (argument/output/temp/alias bytes, on every backend) and the
device's peak memory where the backend reports it (GPU/TPU; the CPU backend does not). The
headline is the ratio search / re-train per estimator. Also: the share of the search step spent
solving zeta, optionally a profile of the step's pieces (step_cost_pieces.py), and the PEFT peer
(peft_peer.py). benchmarks/README.md explains every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# Let the PEFT peer share a GPU with JAX (no effect on CPU, or once jax is imported).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft_peer
from step_cost_pieces import profile_pieces
from step_cost_setup import Case, Setup, build
from step_cost_timing import Runner, measure_together, time_round_robin, warm_up

from s3delta_jax.deltas import Candidate, init_delta, lora_qv
from s3delta_jax.search import gates
from s3delta_jax.search.hypergrad import ESTIMATORS
from s3delta_jax.search.step import (
    SearchSettings,
    adamw_with_linear_decay,
    init_search_state,
    make_search_step,
)
from s3delta_jax.train.retrain_run import RetrainState, make_retrain_step

# The reference's optimizers (reference section 4); the schedule length only sets the lr decay.
LEARNING_RATE, ALPHA_LEARNING_RATE, CLIP_NORM, SCHEDULE_STEPS = 3e-4, 0.1, 2.0, 10_000
# Backbone forward+backward passes per step, read off step.py and hypergrad.py.
PASSES_PER_STEP = {
    "retrain": "1 fwd+bwd (grad delta; structure only)",
    "first_order": "2 fwd+bwd (grad alpha on b_alpha; grad delta on b_delta)",
    "second_order_fd": "5 fwd+bwd (grad delta; grad delta', alpha on b_alpha; grad alpha at delta +- eps v; "
                       "grad delta)",
    "second_order_exact": "3 fwd+bwd + 1 jvp of grad (grad delta; grad delta', alpha on b_alpha; "
                          "jvp over delta of grad alpha; grad delta)",
}
# With delta_gradient='reuse' the second-order steps drop their last pass (the delta update reuses the first).
REUSED_PASSES_PER_STEP = {
    "second_order_fd": "4 fwd+bwd (grad delta, reused for the update; grad delta', alpha on b_alpha; "
                       "grad alpha at delta +- eps v)",
    "second_order_exact": "2 fwd+bwd + 1 jvp of grad (grad delta, reused for the update; grad delta', alpha on "
                          "b_alpha; jvp over delta of grad alpha)",
}
# Measured in this order, smallest expected memory first, so that on a GPU the process's running
# peak after each step is that step's own peak.
ESTIMATOR_ORDER = ("first_order", "second_order_fd", "second_order_exact")
ZETA_SOLVES_PER_STEP = 2  # one for the shared sample, one for the re-sample after the alpha update
ZETA_BATCH = 32  # solves per timed call, so call overhead is not counted as solve time
CPU_MEMORY_NOTE = ("the CPU backend reports no device memory (memory_stats() is None): memory ratios use XLA's "
                   "compiled memory analysis (argument + output + temp - alias bytes of each step executable)")
DEVICE_MEMORY_NOTE = ("device peak = peak_bytes_in_use after each step's warm-up, a running maximum over the process "
                      "(re-train is measured first; device_peak_exact is false where a step did not raise it)")

PRESETS: dict[str, tuple[Case, ...]] = {
    # Under 3 minutes on 2 CPU cores, most of it compiling (compile time grows with a step's passes
    # times the candidates gated in each): one block per stack, the S3PET-L space (LoRA r=1 on every
    # linear: 12 candidates here, 42 with S3PET-M, whose compile would not fit), no dropout (its
    # threefry RNG adds ~50% to compile time on CPU). The tiny T5, then t5-small's widths with the peer.
    "cpu-quick": (
        Case("tiny", batch_size=8, source_length=32, target_length=8, steps=10, warmup=1, num_layers=1,
             dropout_rate=0.0, space="s3pet_lora", peer=False),
        Case("t5-small", batch_size=4, source_length=32, target_length=8, steps=5, warmup=1, num_layers=1,
             dropout_rate=0.0, space="s3pet_lora"),
    ),
    # The whole t5-small (6 + 6 blocks) on S3PET-M with dropout 0.1, both dtypes, the profile in float32.
    "cpu": tuple(
        Case("t5-small", batch_size=8, source_length=64, target_length=8, dtype=dtype, steps=5, warmup=1,
             profile=dtype == "float32")
        for dtype in ("float32", "bfloat16")
    ),
    # The paper's batch (32) and MRPC-like lengths on t5-base and t5-large shapes, with the profile.
    "gpu": tuple(
        Case(model, batch_size=32, source_length=128, target_length=16, dtype=dtype, steps=20, warmup=3,
             profile=True)
        for model in ("t5-base", "t5-large") for dtype in ("float32", "bfloat16")
    ),
}


# --------------------------------------------------------------------------------------------
# The measured steps


def retrain_runner(setup: Setup, candidates: Sequence[Candidate], seed: int = 1) -> Runner:
    """The re-training step of `candidates` (no gates, always on): clipped AdamW on their deltas."""
    optimizer, _ = adamw_with_linear_decay(LEARNING_RATE, SCHEDULE_STEPS)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    delta = init_delta(init_key, candidates)
    state = RetrainState(jnp.zeros((), jnp.int32), delta, optimizer.init(delta), state_key)
    step = make_retrain_step(setup.loss_fn, setup.model.apply, candidates, optimizer, CLIP_NORM)
    return Runner(step, (state, setup.params, setup.batch_delta), threads_state=True)


def delta_gradient_of(case: Case, estimator: str) -> str:
    """The case's delta_gradient for a second-order estimator; first_order has only 'resample'."""
    return "resample" if estimator == "first_order" else case.delta_gradient


def passes_per_step(case: Case, estimator: str) -> str:
    if delta_gradient_of(case, estimator) == "reuse":
        return REUSED_PASSES_PER_STEP[estimator]
    return PASSES_PER_STEP[estimator]


def search_runner(setup: Setup, estimator: str, seed: int = 2) -> Runner:
    """The search step over every candidate with `estimator` (reference settings, except the case's
    delta_gradient for the second-order estimators)."""
    delta_optimizer, schedule = adamw_with_linear_decay(LEARNING_RATE, SCHEDULE_STEPS)
    alpha_optimizer, _ = adamw_with_linear_decay(ALPHA_LEARNING_RATE, SCHEDULE_STEPS)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    state = init_search_state(init_delta(init_key, setup.candidates), len(setup.candidates), delta_optimizer,
                              alpha_optimizer, state_key)
    step = make_search_step(setup.loss_fn, setup.model.apply, setup.candidates, setup.sizes, setup.budget,
                            SearchSettings(estimator=estimator, delta_gradient=delta_gradient_of(setup.case, estimator)),
                            delta_optimizer, alpha_optimizer, schedule)
    return Runner(step, (state, setup.params, setup.batch_delta, setup.batch_alpha), threads_state=True)


def zeta_seconds_per_solve(setup: Setup, seed: int = 3) -> float:
    """One zeta bisection + the gate probabilities on the case's N, timed as one jitted scan over
    ZETA_BATCH different alphas (so call overhead is not counted as solve time)."""
    alphas = jax.random.normal(jax.random.PRNGKey(seed), (ZETA_BATCH, len(setup.candidates)))

    def solve_all(alphas):
        def one(total, alpha):
            zeta = gates.solve_zeta(alpha, setup.sizes, setup.budget)
            return total + gates.gate_probabilities(alpha, setup.sizes, setup.budget, zeta=zeta).sum(), None

        return jax.lax.scan(one, jnp.zeros((), jnp.float32), alphas)[0]

    timed = measure_together({"zeta": Runner(solve_all, (alphas,))}, max(setup.case.steps, 3), 1)
    return timed["zeta"]["median_step_seconds"] / ZETA_BATCH


def peer_device() -> str | None:
    """The torch device matching the JAX backend ('cpu' or 'cuda'), or None when none does."""
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and peft_peer.missing_peer_packages() is None:
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return None


def measure_peer(setup: Setup) -> dict[str, Any]:
    """PEFT LoRA r=8 on self-attention q, v (PyTorch) against ours on the same structure and batch,
    timed in turns like the steps."""
    reason = peft_peer.missing_peer_packages()
    device = peer_device()
    if reason is None and device is None:
        reason = f"no torch device matches the JAX backend {jax.default_backend()!r}; the ratio would compare devices"
    if reason is not None:
        return {"skipped": reason}
    case = setup.case
    batch = {k: np.asarray(v) for k, v in setup.batch_delta.items()}
    peft_step, peft_facts = peft_peer.peer_step(setup.config.to_hf_dict(), batch, case.dtype, device)
    lora = lora_qv(setup.positions, r=8)
    ours = retrain_runner(setup, lora)
    warm_up({"ours": ours, "peft": peft_step}, case.warmup)
    seconds = time_round_robin({"ours": ours, "peft": peft_step}, case.steps)
    ours_median, peft_median = statistics.median(seconds["ours"]), statistics.median(seconds["peft"])
    ours_params = int(sum(c.size for c in lora))
    return {
        "peft": {**peft_facts, "median_step_seconds": peft_median, "step_seconds": seconds["peft"]},
        "ours_lora_qv_r8": {"trainable_params": ours_params, "median_step_seconds": ours_median,
                            "step_seconds": seconds["ours"], **ours.compile_info},
        "ours_over_peft_time": ours_median / peft_median,
        "same_trainable_params": ours_params == peft_facts["trainable_params"],
    }


# --------------------------------------------------------------------------------------------
# One case


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def memory_ratios(search: dict[str, Any], retrain: dict[str, Any]) -> dict[str, Any]:
    """search / re-train memory: the device peaks where the backend reports them, else XLA's
    compiled footprint (memory_basis says which); the compiled total and temp ratios always."""
    compiled_search, compiled_retrain = search["compiled_memory"] or {}, retrain["compiled_memory"] or {}
    compiled = ratio(compiled_search.get("total"), compiled_retrain.get("total"))
    device = ratio(search["device_peak_bytes"], retrain["device_peak_bytes"])
    return {
        "search_over_retrain_memory": device if device is not None else compiled,
        "memory_basis": "device_peak" if device is not None else "xla_compiled",
        "search_over_retrain_device_peak": device,
        "search_over_retrain_compiled_memory": compiled,
        "search_over_retrain_temp_memory": ratio(compiled_search.get("temp"), compiled_retrain.get("temp")),
    }


def measure_case(case: Case, estimators: Sequence[str] = ESTIMATORS,
                 log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Every measurement of one case, as a JSON-able dict (keys explained in benchmarks/README.md)."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ValueError(f"estimators {list(estimators)!r}: use one or more of {', '.join(ESTIMATORS)}")
    setup = build(case)
    log(f"{case.label}: {len(setup.candidates)} candidates, budget {setup.budget}, "
        f"structure of {len(setup.structure)} modules")
    log("  compiling the re-training step and the search steps")
    runners = {"retrain": retrain_runner(setup, setup.structure)}
    for estimator in sorted(set(estimators), key=ESTIMATOR_ORDER.index):
        runners[estimator] = search_runner(setup, estimator)
    log("  timing them in turns")
    timed = measure_together(runners, case.steps, case.warmup)
    retrain = {**timed.pop("retrain"), "modules": len(setup.structure),
               "trainable_params": int(sum(c.size for c in setup.structure)),
               "passes_per_step": PASSES_PER_STEP["retrain"]}
    zeta = zeta_seconds_per_solve(setup)
    search = {
        estimator: {
            **result,
            "passes_per_step": passes_per_step(case, estimator),
            "delta_gradient": delta_gradient_of(case, estimator),
            "search_over_retrain_time": result["median_step_seconds"] / retrain["median_step_seconds"],
            **memory_ratios(result, retrain),
            "search_over_retrain_compile_time": result["compile_seconds"] / retrain["compile_seconds"],
            "zeta_share_of_step": ZETA_SOLVES_PER_STEP * zeta / result["median_step_seconds"],
        }
        for estimator, result in timed.items()
    }
    output = {
        "label": case.label,
        "case": dataclasses.asdict(case),
        "model": {
            "backbone_params": setup.backbone_params,
            "space": case.space_name,
            "candidates": len(setup.candidates),
            "search_space_params": int(setup.sizes.sum()),
            "budget_params": setup.budget,
        },
        "memory_note": CPU_MEMORY_NOTE if retrain["device_peak_bytes"] is None else DEVICE_MEMORY_NOTE,
        "retrain": retrain,
        "search": search,
        "zeta": {"seconds_per_solve": zeta, "solves_per_step": ZETA_SOLVES_PER_STEP},
    }
    if case.profile:
        log("  profile of the pieces")
        output["profile"] = profile_pieces(setup)
    if case.peer:
        log("  PEFT peer")
        output["peer"] = measure_peer(setup)
    return output


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    """Where the numbers come from (the load average tells whether the machine was shared)."""
    device = jax.local_devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
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
    """A plain-text table of one case: re-train, each estimator with its ratios, and the peer."""
    model, retrain = result["model"], result["retrain"]
    lines = [
        (f"== {result['label']}: {model['candidates']} candidates ({model['space']}), "
        f"budget {model['budget_params']} params, "
        f"structure {retrain['modules']} modules / {retrain['trainable_params']} params"),
        (f"{'step':<26}{'median ms':>10}{'compile s':>10}{'XLA MiB':>9}{'temp MiB':>9}{'peak MiB':>9}"
        f"{'time x':>8}{'mem x':>7}{'temp x':>8}{'zeta %':>8}"),
    ]
    mib = 1 / 2**20

    def row(name: str, m: dict[str, Any]) -> str:
        memory = m["compiled_memory"] or {}
        return (f"{name:<26}{_cell(m['median_step_seconds'], '.1f', 1e3):>10}{_cell(m['compile_seconds'], '.1f'):>10}"
                f"{_cell(memory.get('total'), '.1f', mib):>9}{_cell(memory.get('temp'), '.1f', mib):>9}"
                f"{_cell(m['device_peak_bytes'], '.1f', mib):>9}{_cell(m.get('search_over_retrain_time'), '.2f'):>8}"
                f"{_cell(m.get('search_over_retrain_memory'), '.2f'):>7}"
                f"{_cell(m.get('search_over_retrain_temp_memory'), '.2f'):>8}"
                f"{_cell(m.get('zeta_share_of_step'), '.2f', 100):>8}")

    lines.append(row("re-train (structure)", retrain))
    lines.extend(row(f"search {estimator}", m) for estimator, m in result["search"].items())
    lines.append(f"zeta: {1e6 * result['zeta']['seconds_per_solve']:.1f} us per solve, "
                 f"{result['zeta']['solves_per_step']} per search step. Memory: {result['memory_note']}")
    if "profile" in result:
        profile = result["profile"]
        lines.append("pieces (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in profile["piece_seconds"].items()))
        lines.append("sum of pieces (ms): " + ", ".join(
            f"{k} {1e3 * v:.1f}" for k, v in profile["sum_of_pieces_seconds"].items()))
        lines.append(f"finite-difference pair batched with vmap / as two passes: "
                     f"{profile['hvp_fd_vmapped_over_two_passes']:.2f}")
    peer = result.get("peer")
    if peer is not None and "skipped" in peer:
        lines.append(f"PEFT peer skipped: {peer['skipped']}")
    elif peer is not None:
        lines.append(f"PEFT LoRA r8 q,v (torch {peer['peft']['device']}, {peer['peft']['torch_threads']} threads): "
                     f"{1e3 * peer['peft']['median_step_seconds']:.1f} ms; ours, same structure: "
                     f"{1e3 * peer['ours_lora_qv_r8']['median_step_seconds']:.1f} ms; "
                     f"ours/PEFT {peer['ours_over_peft_time']:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    """The preset's cases with the flags applied: --model picks the preset's case of each model (or
    the preset's first case's settings for a model it lacks), --dtype multiplies the cases, the
    other flags set a field of all of them."""
    cases = list(PRESETS[args.preset])
    if args.model:
        cases = [next((c for c in cases if c.model == m), dataclasses.replace(cases[0], model=m))
                 for m in args.model.split(",")]
    if args.dtype:
        cases = [dataclasses.replace(c, dtype=d) for c in cases for d in args.dtype.split(",")]
    names = ("batch_size", "source_length", "target_length", "steps", "warmup", "budget", "num_layers",
             "dropout_rate", "space", "profile", "peer", "delta_gradient")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.all_layers:
        overrides["num_layers"] = None
    return list(dict.fromkeys(dataclasses.replace(c, **overrides) for c in cases))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-quick")
    parser.add_argument("--model", help="comma-separated models: tiny, t5-small, t5-base, t5-large (random weights "
                        "of that shape); each takes the preset's case of that model, else the preset's first case")
    parser.add_argument("--dtype", help="comma-separated dtypes (float32, bfloat16), each applied to every case")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--source-length", type=int)
    parser.add_argument("--target-length", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per measured function")
    parser.add_argument("--warmup", type=int, help="untimed steps before them")
    parser.add_argument("--budget", type=float, help="budget: a ratio (< 1) of the backbone or a parameter count")
    parser.add_argument("--num-layers", type=int, help="encoder and decoder blocks each (the model's widths)")
    parser.add_argument("--all-layers", action="store_true",
                        help="the model's own depth (undo a preset's --num-layers)")
    parser.add_argument("--dropout-rate", type=float, help="default 0.1, as in the reference")
    parser.add_argument("--space", help="search space preset (default s3pet_mix)")
    parser.add_argument("--delta-gradient", choices=("resample", "reuse"),
                        help="second-order steps: the delta update's own pass (reference, default) or reuse the "
                        "virtual step's gradient")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated subset")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                        help="time the pieces of the steps (default: the preset's choice)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction,
                        help="time the PEFT peer (default: the preset's choice; skipped with a message "
                        "where torch/peft are missing)")
    parser.add_argument("--json", help="write all results to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cases = cases_from_args(args)
    estimators = tuple(args.estimators.split(","))
    started, cpu_started = time.perf_counter(), time.process_time()
    report = {
        "benchmark": "step_cost",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "cases": [],
    }

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    for case in cases:
        result = measure_case(case, estimators, log=log)
        report["cases"].append(result)
        print(format_case(result), flush=True)
    report["wall_seconds"] = time.perf_counter() - started
    report["process_cpu_seconds"] = time.process_time() - cpu_started
    report["load_average_at_end"] = list(os.getloadavg())
    load = (report["machine"]["load_average_1_5_15_min"][0], report["load_average_at_end"][0])
    print(f"wall {report['wall_seconds']:.1f} s, process CPU {report['process_cpu_seconds']:.1f} s, "
          f"load average {load[0]:.1f} -> {load[1]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
