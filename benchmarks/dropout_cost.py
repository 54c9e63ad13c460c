"""What dropout's masks cost a re-training step: flax's `nn.Dropout` (jax.random bits) against the models'
hashed `Dropout` (s3delta_jax/models/dropout.py), compiled in one process and timed round robin.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python benchmarks/dropout_cost.py            # paper-cpu's shape: whole t5-small, 8 x 128 -> 3

The step is `Retrainer.step` of step_cost.py's structure at the paper's budget; the two variants differ
only in the class the T5 modules build their dropout from (swapped before each is traced).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import flax.linen as nn

import step_cost
from step_cost_setup import Case, build
from step_cost_timing import Runner, measure_together

import s3delta_jax.models.t5.model as t5_model
from s3delta_jax.models.dropout import Dropout

VARIANTS = {"flax nn.Dropout (jax.random)": nn.Dropout, "hashed Dropout": Dropout}


def compile_variants(case: Case) -> dict[str, Runner]:
    """One compiled re-training step per dropout class, on the same weights, structure and batch."""
    setup = build(case)
    runners = {}
    try:
        for name, dropout_class in VARIANTS.items():
            t5_model.Dropout = dropout_class  # the modules' setup() reads it when the step is traced
            runners[name] = step_cost.retrain_runner(setup, setup.structure)
    finally:
        t5_model.Dropout = Dropout
    return runners


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="t5-small", help="tiny or a T5 preset (random weights of its shape)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=128)
    parser.add_argument("--target-length", type=int, default=3)
    parser.add_argument("--dropout-rate", type=float, default=0.1)
    parser.add_argument("--num-layers", type=int, help="encoder and decoder blocks each (default: the model's)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    case = Case(args.model, batch_size=args.batch_size, source_length=args.source_length,
                target_length=args.target_length, dropout_rate=args.dropout_rate, num_layers=args.num_layers,
                steps=args.steps, warmup=args.warmup)  # budget: the model's default (the paper's; tiny's own)
    print(f"== re-training step, {case.label}", flush=True)
    runners = compile_variants(case)
    measured = measure_together(runners, case.steps, case.warmup)
    baseline = measured[next(iter(VARIANTS))]["median_step_seconds"]
    results = {}
    for name, runner in runners.items():
        median, steps = measured[name]["median_step_seconds"], measured[name]["step_seconds"]
        results[name] = {"median_step_seconds": median, "min_step_seconds": min(steps),
                         "compile_seconds": measured[name]["compile_seconds"], "x_flax": median / baseline,
                         "loss": float(runner.output[1]["loss"])}
        print(f"{name:30s} median {median:8.4f} s  min {min(steps):8.4f} s  "
              f"compile {results[name]['compile_seconds']:6.1f} s  x flax {median / baseline:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
