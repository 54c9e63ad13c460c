"""What one S3Delta search step costs against one re-training step: time, memory, compile time.

    python benchmarks/step_cost.py --preset cpu-quick --json out.json    # the fast check
    python benchmarks/step_cost.py --preset paper-cpu --json paper.json  # the paper's search setting

For each case (a T5 shape with random weights, batch size, source/target lengths, dtype) this
measures, in one process, the library's own steps:
  * the re-training step of a structure at the budget (a greedy selection from random p over the
    search space, so a mix of module types spread over the model): `Retrainer.step`;
  * the search step over the whole space with each estimator (first_order, second_order_fd,
    second_order_exact; '+reuse' for delta_gradient='reuse', '+shared' for hessian_dropout='shared'):
    `Searcher.step`, one D_delta and one D_alpha batch of the same size, reference settings;
on a `T5Backbone` with the loss of its task head (`Seq2SeqHead.loss`), and for each: the median
step time after warm-up, the compile time (trace + lower + XLA compile), XLA's compiled memory
analysis (argument/output/temp/alias bytes, on every backend) and the device's peak memory where
the backend reports it (GPU/TPU; the CPU backend does not). The headline is the ratio
search / re-train per estimator. Also: the share of the search step spent solving zeta, optionally
a profile of the step's pieces (step_cost_pieces.py), the PEFT peer (peft_peer.py) and the authors'
PyTorch step (authors_peer.py). `--compile-only` compiles every step and stops there (t5-base /
t5-large shapes). benchmarks/README.md explains every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# Let the PEFT peer share a GPU with JAX (no effect on CPU, or once jax is imported).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import authors_peer
import jax
import jax.numpy as jnp
import numpy as np
import peft_peer
from step_cost_pieces import profile_pieces
from step_cost_report import format_case, machine
from step_cost_setup import ESTIMATORS, PAPER_BUDGET, SEARCHES, Case, Setup, build
from step_cost_timing import Runner, measure_together, time_round_robin, warm_up

from s3delta_jax.deltas import Candidate, expand
from s3delta_jax.models.remat import REMAT_POLICIES
from s3delta_jax.search import gates
from s3delta_jax.search.searcher import Searcher
from s3delta_jax.train.retrainer import Retrainer

# The length of the learning-rate decays (only sets the learning rate); the optimizers are the
# Searcher's and Retrainer's defaults, the reference's.
SCHEDULE_STEPS = 10_000
PEER_BASELINE = "lora_qv_r8"

# Backbone forward+backward passes per step, read off search/step.py and search/hypergrad.py.
PASSES_PER_STEP = {
    "retrain": "1 fwd+bwd (grad delta; structure only)",
    "first_order": "2 fwd+bwd (grad alpha on b_alpha; grad delta on b_delta)",
    "second_order_fd": "5 fwd+bwd (grad delta; grad delta', alpha on b_alpha; grad alpha at delta +- eps v; "
                       "grad delta)",
    "second_order_fd+reuse": "4 fwd+bwd (grad delta, reused for the update; grad delta', alpha on b_alpha; "
                             "grad alpha at delta +- eps v)",
    "second_order_exact": "3 fwd+bwd + 1 jvp of grad (grad delta; grad delta', alpha on b_alpha; "
                          "jvp over delta of grad alpha; grad delta)",
    "second_order_exact+reuse": "2 fwd+bwd + 1 jvp of grad (grad delta, reused for the update; grad delta', "
                                "alpha on b_alpha; jvp over delta of grad alpha)",
    "second_order_exact+shared": "3 fwd+bwd + 1 tangent pass (grad delta, linearized; grad delta', alpha on b_alpha; "
                                 "the linearization's tangent along v; grad delta)",
    "second_order_exact+shared+reuse": "2 fwd+bwd + 1 tangent pass (grad delta, linearized and reused for the "
                                       "update; grad delta', alpha on b_alpha; the linearization's tangent along v)",
}
ZETA_SOLVES_PER_STEP = 2  # one for the shared sample, one for the re-sample after the alpha update
ZETA_BATCH = 32  # solves per timed call, so call overhead is not counted as solve time
CPU_MEMORY_NOTE = ("the CPU backend reports no device memory (memory_stats() is None): memory ratios use XLA's "
                   "compiled memory analysis (argument + output + temp - alias bytes of each step executable)")
DEVICE_MEMORY_NOTE = ("device peak = peak_bytes_in_use after each step's warm-up, a running maximum over the process "
                      "(re-train is measured first; device_peak_exact is false where a step did not raise it)")
COMPILE_ONLY_NOTE = "compile only: no step was run; memory is XLA's compiled memory analysis"

PRESETS: dict[str, tuple[Case, ...]] = {
    # The fast check: under 3 minutes on 2 CPU cores, most of it compiling (compile time grows with a
    # step's passes times the candidates gated in each): one block per stack, the S3PET-L space (LoRA
    # r=1 on every linear: 12 candidates here, 42 with S3PET-M), no dropout (its threefry RNG adds
    # ~50% to compile time on CPU). The tiny T5, then t5-small's widths with the PEFT peer.
    "cpu-quick": (
        Case("tiny", batch_size=8, source_length=32, target_length=8, steps=10, warmup=1, num_layers=1,
             dropout_rate=0.0, space="s3pet_lora", peer=False),
        Case("t5-small", batch_size=4, source_length=32, target_length=8, steps=5, warmup=1, num_layers=1,
             dropout_rate=0.0, space="s3pet_lora"),
    ),
    # The headline: exactly the paper's search setting (S3PET-M at 1.39 per ten-thousand, MRPC-like
    # lengths, batch 8, dropout 0.1) on the whole t5-small, as ../shared/tools/authors_step.py runs theirs.
    "paper-cpu": (
        Case("t5-small", batch_size=8, source_length=128, target_length=3, steps=5, warmup=1, budget=PAPER_BUDGET,
             estimators=("first_order", "second_order_fd", "second_order_fd+reuse"), peer=False),
    ),
    # The whole t5-small on S3PET-M with dropout 0.1, both dtypes, the profile in float32.
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
PRESET_HELP = {
    "cpu-quick": "the fast check (1+1 blocks, S3PET-L, no dropout; ~1-3 min on 2 cores)",
    "paper-cpu": "the headline: the paper's search setting on the whole t5-small (S3PET-M, 232 candidates, "
                 "budget 1.389e-4, dropout 0.1, batch 8, 128 -> 3 tokens; 10-20 min on one core)",
    "cpu": "whole t5-small, S3PET-M, 64 -> 8 tokens, float32 and bfloat16, the profile (long)",
    "gpu": "t5-base and t5-large shapes, batch 32, 128 -> 16 tokens, the profile",
}


# --------------------------------------------------------------------------------------------
# The measured steps


def unjitted(step: Callable) -> Callable:
    """The `jit` given to Searcher and Retrainer: their raw step, which Runner compiles (and times that)."""
    return step


def retrain_runner(setup: Setup, candidates: Sequence[Candidate], seed: int = 1) -> Runner:
    """`Retrainer.step` on `candidates` (no gates, always on): clipped AdamW on their deltas."""
    retrainer = Retrainer(setup.model_apply, candidates, setup.loss_fn, total_steps=SCHEDULE_STEPS, jit=unjitted)
    state = retrainer.init(jax.random.PRNGKey(seed))
    return Runner(retrainer.step, (state, setup.params, setup.batch_delta), threads_state=True)


def search_runner(setup: Setup, search: str, seed: int = 2) -> Runner:
    """`Searcher.step` over every candidate with the settings SEARCHES[search] (reference otherwise)."""
    searcher = Searcher(setup.search_apply, setup.candidates, setup.loss_fn, budget=setup.budget,
                        total_steps=SCHEDULE_STEPS, settings=SEARCHES[search], jit=unjitted, scans=setup.scans)
    state = searcher.init(jax.random.PRNGKey(seed))
    return Runner(searcher.step, (state, setup.search_params, setup.batch_delta, setup.batch_alpha),
                  threads_state=True)


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
    """PEFT LoRA r=8 on self-attention q, v (PyTorch) against ours on the same structure (the
    backbone's `lora_qv_r8` baseline) and batch, timed in turns like the steps."""
    reason = peft_peer.missing_peer_packages()
    device = peer_device()
    if reason is None and device is None:
        reason = f"no torch device matches the JAX backend {jax.default_backend()!r}; the ratio would compare devices"
    if reason is not None:
        return {"skipped": reason}
    case = setup.case
    batch = {k: np.asarray(v) for k, v in setup.batch_delta.items()}
    peft_step, peft_facts = peft_peer.peer_step(setup.backbone.config.to_hf_dict(), batch, case.dtype, device)
    lora = expand(setup.backbone.baseline(PEER_BASELINE), setup.positions).candidates
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


def ratios(search: dict[str, Any], retrain: dict[str, Any], full_depth: dict[str, Any]) -> dict[str, Any]:
    """search / re-train: compile time, XLA's compiled footprint and temporaries (known without
    running); where the steps ran, also the median time (against the structure's and the full-depth
    re-training step) and the memory: the device peaks where the backend reports them, else the
    compiled footprint (memory_basis says which)."""
    compiled_search, compiled_retrain = search["compiled_memory"] or {}, retrain["compiled_memory"] or {}
    compiled = {
        "search_over_retrain_compile_time": search["compile_seconds"] / retrain["compile_seconds"],
        "search_over_retrain_compiled_memory": ratio(compiled_search.get("total"), compiled_retrain.get("total")),
        "search_over_retrain_temp_memory": ratio(compiled_search.get("temp"), compiled_retrain.get("temp")),
    }
    if "median_step_seconds" not in search:
        return compiled
    device = ratio(search["device_peak_bytes"], retrain["device_peak_bytes"])
    return {
        **compiled,
        "search_over_retrain_time": search["median_step_seconds"] / retrain["median_step_seconds"],
        "search_over_full_depth_retrain_time": search["median_step_seconds"] / full_depth["median_step_seconds"],
        "search_over_retrain_memory": device if device is not None else compiled["search_over_retrain_compiled_memory"],
        "memory_basis": "device_peak" if device is not None else "xla_compiled",
        "search_over_retrain_device_peak": device,
    }


def measure_case(case: Case, compile_only: bool = False, authors_checkout: str | None = None,
                 authors_python: str | None = None, log: Callable[[str], None] = lambda message: None,
                 ) -> dict[str, Any]:
    """Every measurement of one case, as a JSON-able dict (keys explained in benchmarks/README.md).

    compile_only: compile the steps (on the backbone's parameter shapes, no weights) and stop: no
      step runs, so no times, zeta, profile or peers.
    authors_checkout / authors_python: the authors' peer (authors_peer.py); None skips it.
    """
    setup = build(case, abstract_params=compile_only)
    log(f"{case.label}: {len(setup.candidates)} candidates, budget {setup.budget}, "
        f"structure of {len(setup.structure)} modules")
    log("  compiling the re-training step and the search steps")
    [full_depth_module] = setup.full_depth_structure
    runners = {"retrain": retrain_runner(setup, setup.structure),
               "retrain_full_depth": retrain_runner(setup, [full_depth_module])}
    for search in case.searches:
        runners[search] = search_runner(setup, search)
        log(f"  compiled {search} in {runners[search].compile_info['compile_seconds']:.1f} s")
    if compile_only:
        measured = {name: dict(runner.compile_info) for name, runner in runners.items()}
    else:
        log("  timing them in turns")
        measured = measure_together(runners, case.steps, case.warmup)
    retrain = {**measured.pop("retrain"), "modules": len(setup.structure),
               "trainable_params": int(sum(c.size for c in setup.structure)),
               "passes_per_step": PASSES_PER_STEP["retrain"]}
    full_depth = {**measured.pop("retrain_full_depth"), "candidate": full_depth_module.name,
                  "trainable_params": int(full_depth_module.size), "passes_per_step": PASSES_PER_STEP["retrain"]}
    search = {
        name: {**result, "passes_per_step": PASSES_PER_STEP[name], "delta_gradient": SEARCHES[name].delta_gradient,
               "hessian_dropout": SEARCHES[name].hessian_dropout, **ratios(result, retrain, full_depth)}
        for name, result in measured.items()
    }
    output = {
        "label": case.label,
        "case": dataclasses.asdict(case),
        "compile_only": compile_only,
        "model": {
            "backbone_params": setup.backbone.num_params,
            "space": case.space_name,
            "candidates": len(setup.candidates),
            "search_space_params": int(setup.sizes.sum()),
            "budget_params": setup.budget,
        },
        "retrain": retrain,
        "retrain_full_depth": full_depth,
        "search": search,
    }
    if compile_only:
        output["memory_note"] = COMPILE_ONLY_NOTE
        return output
    output["memory_note"] = CPU_MEMORY_NOTE if retrain["device_peak_bytes"] is None else DEVICE_MEMORY_NOTE
    zeta = zeta_seconds_per_solve(setup)
    output["zeta"] = {"seconds_per_solve": zeta, "solves_per_step": ZETA_SOLVES_PER_STEP}
    for result in search.values():
        result["zeta_share_of_step"] = ZETA_SOLVES_PER_STEP * zeta / result["median_step_seconds"]
    if case.profile:
        log("  profile of the pieces")
        output["profile"] = profile_pieces(setup)
    if case.peer:
        log("  PEFT peer")
        output["peer"] = measure_peer(setup)
    our_seconds = {"retrain": retrain["median_step_seconds"],
                   **{name: result["median_step_seconds"] for name, result in search.items()}}
    output["authors_peer"] = measure_authors_peer(case, our_seconds, authors_checkout, authors_python, log)
    return output


def measure_authors_peer(case: Case, our_seconds: dict[str, float], checkout: str | None, python: str | None,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """The authors' steps on `case` (authors_peer.py) and the ratios to ours, or why they were not run."""
    if checkout is None:
        return {"skipped": authors_peer.SETUP_HINT}  # the table says so, once per case
    log("  the authors' steps (../shared/tools/authors_step.py)")
    authors = authors_peer.measure_authors(case, checkout, python)
    return {**authors, **authors_peer.compare(authors, our_seconds)} if "steps" in authors else authors


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
             "dropout_rate", "space", "scan_layers", "remat", "profile", "peer")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.estimators:
        overrides["estimators"] = tuple(args.estimators.split(","))
    if args.all_layers:
        overrides["num_layers"] = None
    return list(dict.fromkeys(dataclasses.replace(c, **overrides) for c in cases))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    presets = "\n".join(f"  {name:<10} {text}" for name, text in PRESET_HELP.items())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"presets:\n{presets}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu-quick",
                        help="see below (default: cpu-quick, the fast check)")
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
    parser.add_argument("--estimators", help=f"comma-separated search steps, of {', '.join(SEARCHES)} ('+reuse': "
                        f"delta_gradient='reuse', the virtual step's gradient updates delta; '+shared': "
                        f"hessian_dropout='shared', the exact Hessian term linearized with that gradient); default: the "
                        f"preset's ({', '.join(ESTIMATORS)} unless it says otherwise)")
    parser.add_argument("--scan-layers", action=argparse.BooleanOptionalAction,
                        help="search steps run the blocks of each stack under nn.scan, so they compile one "
                        "block body however deep the model is (default: off)")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES),
                        help="search steps recompute each block in the backward pass: 'full' stores only its "
                        "inputs, 'dots' also its weight matmuls' outputs (default: none)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                        help="time the pieces of the steps (default: the preset's choice)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction,
                        help="time the PEFT peer (default: the preset's choice; skipped with a message "
                        "where torch/peft are missing)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile every step (compile seconds, XLA compiled memory) on the parameter shapes "
                        "and stop: no step runs (for t5-base / t5-large compile times)")
    parser.add_argument("--authors-peer", metavar="PATH",
                        help="a checkout of the authors' thunlp/S3Delta, set up as the docstring of "
                        "../shared/tools/authors_step.py says: time their PyTorch steps on the same shape "
                        "(default: skipped)")
    parser.add_argument("--authors-python", metavar="PYTHON",
                        help="the Python of their environment (default: venv/bin/python beside the checkout)")
    parser.add_argument("--json", help="write all results to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cases = cases_from_args(args)
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
        result = measure_case(case, args.compile_only, args.authors_peer, args.authors_python, log=log)
        report["cases"].append(result)
        print(format_case(result), flush=True)
    report["wall_seconds"] = time.perf_counter() - started
    report["process_cpu_seconds"] = time.process_time() - cpu_started
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["load_average_at_end"] = list(os.getloadavg())
    load = (report["machine"]["load_average_1_5_15_min"][0], report["load_average_at_end"][0])
    print(f"wall {report['wall_seconds']:.1f} s, process CPU {report['process_cpu_seconds']:.1f} s, "
          f"peak RSS {report['peak_rss_mib']:.0f} MiB, load average {load[0]:.1f} -> {load[1]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
