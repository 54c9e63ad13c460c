"""Runs per hour on a CPU: one process on every core against one process pinned to each core.

    python benchmarks/cpu_shards.py --config configs/mrpc.py:minilm --config.data.path=/path/to/glue/MRPC

Decides how to run structures.py on a CPU machine: as one process, or as one `--shard I/N` per core
(`taskset -c I`). Each setting times the config's re-training step (`Retrainer.step` of a manual
structure, default LoRA r=1 on query/value, on the first --steps batches of the seed's train split:
one pass compiles every padded length, a second pass is timed) in fresh worker processes: first one
worker on every core, then one worker pinned to each core, all at once. Prints seconds per step of
each worker, the steps per second of each setting and their ratio (> 1: the pinned shards finish the
benchmark sooner), and with --json writes them with the machine and its load average. Too few cores,
an unknown structure or no `taskset` exits 2 with one line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # config files import `configs.base`

import jax  # noqa: E402

from s3delta_jax.deltas import expand  # noqa: E402
from s3delta_jax.models.registry import load_backbone  # noqa: E402
from s3delta_jax.train.config_file import apply_overrides, load_config, split_overrides  # noqa: E402
from s3delta_jax.train.prepare import load_task_data, place_backbone, train_batches  # noqa: E402
from s3delta_jax.train.retrainer import Retrainer  # noqa: E402
from step_cost_report import machine  # noqa: E402


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file, FILE[:VARIANT], e.g. configs/mrpc.py:minilm")
    parser.add_argument("--structure", default="lora_qv_r1", help="the backbone's manual structure to re-train")
    parser.add_argument("--steps", type=int, default=40, help="batches timed per worker (each compiled first)")
    parser.add_argument("--cores", type=int,
                        help="pinned workers, one per core (default: every core this process may use)")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    available = len(os.sched_getaffinity(0))
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not args.worker and not 2 <= (args.cores or available) <= available:
        parser.error(f"--cores: pinning needs 2 or more cores, at most the {available} this process may use")
    return args


def check_structure(config_spec: str, overrides: Sequence, structure: str) -> None:
    """Exits 2 with one line unless `structure` is one of the config's backbone's manual structures."""
    config = load_config(config_spec)
    apply_overrides(config, overrides, config_spec)
    baselines = load_backbone(config.model).baselines
    if structure not in baselines:
        print(f"cpu_shards.py: --structure {structure} is not a manual structure of {config.model.name}; "
              f"choose one of {', '.join(baselines)}", file=sys.stderr)
        raise SystemExit(2)


def seconds_per_step(config_spec: str, overrides: Sequence, structure: str, steps: int) -> float:
    """Seconds per re-training step of the manual `structure` over the seed's first `steps` batches (the
    loader goes on into later epochs where one has fewer)."""
    config = load_config(config_spec)
    apply_overrides(config, overrides, config_spec)
    backbone = load_backbone(config.model)
    candidates = expand(backbone.baseline(structure), backbone.positions()).candidates
    data = load_task_data(config.data, backbone, config.seed)
    head = backbone.task_head(data.task, config.eval.method, config.eval.max_decode_length)
    placed = place_backbone(backbone, config.seed, config.mesh)
    retrainer = Retrainer(backbone.module.apply, candidates, head.loss, total_steps=steps,
                          learning_rate=config.retrain.learning_rate, clip_norm=config.retrain.clip_norm,
                          jit=placed.partitioner.step_jit(num_batches=1))
    state = retrainer.init(jax.random.PRNGKey(config.seed), extra=head.init_extra(jax.random.PRNGKey(config.seed)))
    loader = train_batches(data.encoded["train"], config, "retrain", config.seed, placed.partitioner)
    batches = [placed.partitioner.global_batch(b) for b in itertools.islice(iter(loader), steps)]
    timings = []
    for _ in range(2):  # the first pass compiles each padded length
        started = time.perf_counter()
        for batch in batches:
            state, metrics = retrainer.step(state, placed.params, batch)
        jax.block_until_ready(metrics)
        timings.append((time.perf_counter() - started) / steps)
    return timings[1]


def run_workers(argv: Sequence[str], core_sets: Sequence[set[int]]) -> list[dict]:
    """{"seconds_per_step", "cores": the cores it ran on} of one worker per set of cores, all at once
    (pinned by `taskset`: a fork of this process, which has started JAX's threads, could deadlock)."""
    workers = [subprocess.Popen(["taskset", "-c", ",".join(map(str, sorted(cores))), sys.executable, __file__,
                                 *argv, "--worker"], stdout=subprocess.PIPE, text=True) for cores in core_sets]
    outputs = [worker.communicate()[0] for worker in workers]
    codes = [worker.returncode for worker in workers]
    if any(codes):
        raise RuntimeError(f"a worker failed (exit codes {codes}); its traceback is above")
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    args = parse_args(rest)
    if args.worker:
        seconds = seconds_per_step(args.config, overrides, args.structure, args.steps)
        print(json.dumps({"seconds_per_step": seconds, "cores": sorted(os.sched_getaffinity(0))}))
        return {}
    if shutil.which("taskset") is None:
        print("cpu_shards.py: pinning needs taskset (Debian/Ubuntu: apt install util-linux)", file=sys.stderr)
        raise SystemExit(2)
    check_structure(args.config, overrides, args.structure)
    available = sorted(os.sched_getaffinity(0))
    cores = available[: args.cores or len(available)]
    where = machine()  # the load average before the workers start tells whether the machine was shared
    one = run_workers(argv, [set(cores)])[0]
    pinned_workers = run_workers(argv, [{core} for core in cores])
    shared, pinned = one["seconds_per_step"], [w["seconds_per_step"] for w in pinned_workers]
    result = {"config": args.config, "overrides": [str(o) for o in overrides], "structure": args.structure,
              "steps": args.steps, "cores": cores,
              "worker_cores": [one["cores"]] + [w["cores"] for w in pinned_workers],
              "one_process_seconds_per_step": shared, "pinned_seconds_per_step": pinned,
              "one_process_steps_per_second": 1 / shared, "pinned_steps_per_second": sum(1 / s for s in pinned),
              "machine": where, "load_average_at_end": list(os.getloadavg())}
    result["pinned_over_one_process"] = result["pinned_steps_per_second"] / result["one_process_steps_per_second"]
    print(f"one process on cores {one['cores']}: {shared:.3f} s a step, "
          f"{result['one_process_steps_per_second']:.3f} steps/s")
    print(f"{len(cores)} processes, one per core: " + " / ".join(f"{s:.3f}" for s in pinned)
          + f" s a step, {result['pinned_steps_per_second']:.3f} steps/s together")
    print(f"pinned shards / one process: {result['pinned_over_one_process']:.2f}x the steps per second")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
