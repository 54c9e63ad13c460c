"""Helpers of the scale tests: subprocesses with fake CPU devices and what their runs wrote.

XLA_FLAGS is set for the subprocesses only, before they import jax, never in the pytest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("mesh_driver.py")
STEPS = 20
# The smoke search cut to STEPS steps, with the first-order hypergradient: it partitions exactly like
# the second-order one (the same sharded forward and backward passes) and compiles four times faster.
SMOKE_OVERRIDES = {"search.max_steps": STEPS, "search.estimator": "first_order"}
# The tiny random encoder's run: MiniLM-L6's vocabulary and tokenizer, 2 layers of width 32, on the
# synthetic task, sized like the smoke search.
ENCODER_OVERRIDES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def encoder_config():
    """configs/mrpc.py:minilm with random weights of a tiny encoder on the built-in synthetic task."""
    from configs import mrpc
    from ml_collections import ConfigDict

    config = mrpc.get_config("minilm")
    config.model.random_init = True
    config.model.config_overrides = ConfigDict(ENCODER_OVERRIDES, type_safe=False)
    config.model.dropout_rate = 0.0
    config.data.task = "synthetic"
    config.search.budget = 400
    config.search.update(dict(batch_size=16, eval_every=10, eval_batch_size=64, max_steps=STEPS,
                              estimator="first_order", learning_rate=3e-3))
    config.retrain_after_search = False
    return config


# Backbone weights whose placement mesh_driver.py reports: vocab x embed, embed x joined_kv, embed x mlp.
EMBEDDING, Q, WI = ("shared/embedding", "encoder/block_0/layer_0/SelfAttention/q/kernel",
                    "encoder/block_0/layer_1/DenseReluDense/wi/kernel")
# Losses of a mesh against one device: 20 training steps amplify the float32 rounding of sums taken
# in another order over the shards (measured on jax 0.10.2 CPU, 8-way data parallel: up to 1.5e-4
# relative, from step 9 on; 1e-4 was exceeded before this change too).
LOSS_RTOL = 5e-4


class Job:
    """A subprocess started now and awaited later; stdout/stderr go to `log_stem`.out/.err."""

    def __init__(self, args: list[str], env: dict, log_stem: Path, workdir: Path | None = None):
        self.args, self.log_stem, self.workdir, self.started = args, log_stem, workdir, time.monotonic()
        self._out, self._err = open(f"{log_stem}.out", "w"), open(f"{log_stem}.err", "w")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._out, stderr=self._err)
        self.seconds: float | None = None

    def result(self, timeout: float = 900) -> str:
        """stdout of the finished process; fails the test with its stderr tail if it failed."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._out.close()
            self._err.close()
        if self.seconds is None:
            self.seconds = time.monotonic() - self.started
            print(f"{self.log_stem.parent.name}/{self.log_stem.name}: {self.seconds:.0f} s")
        stderr = Path(f"{self.log_stem}.err").read_text()
        assert self.process.returncode == 0, f"{' '.join(self.args[:3])} failed:\n{stderr[-4000:]}"
        return Path(f"{self.log_stem}.out").read_text()


def device_env(base: dict, devices: int) -> dict:
    """`base` (the session's subprocess_env) with `devices` fake CPU devices."""
    return dict(base, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {base['XLA_FLAGS']}")


def start_driver(spec: dict, env: dict, log_stem: Path) -> Job:
    return Job([sys.executable, str(DRIVER), json.dumps(spec)], env, log_stem)


def driver_records(job: Job) -> list[dict]:
    return [json.loads(line) for line in job.result().splitlines() if line.startswith("{")]


def losses(workdir: Path) -> np.ndarray:
    """[steps, 2]: loss_delta and loss_alpha of every logged step, in step order."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return np.array([[r["loss_delta"], r["loss_alpha"]] for r in records])


# Alpha and p of a mesh against one device after STEPS steps: Adam divides each alpha gradient by its
# own running RMS, so a gradient near zero turns the same float32 rounding into an update difference of
# up to lr = 0.1 times that relative error (measured on jax 0.10.2 CPU, 8-way data parallel: alpha
# differences up to 5.8e-4 on values of -1.3 to 0.5, one chosen set). The chosen structure must be equal.
GATE_ATOL = 2e-3


def assert_same_structure(workdir: Path, reference: Path) -> None:
    """structure.json equal to the reference's (chosen modules, sizes, budget), its alpha and p per
    candidate within GATE_ATOL."""
    got, want = (json.loads((w / "structure.json").read_text()) for w in (workdir, reference))
    gate_values = [[[c.pop("alpha"), c.pop("p")] for c in s["candidates"]] for s in (got, want)]
    np.testing.assert_allclose(*gate_values, rtol=1e-4, atol=GATE_ATOL)
    assert got == want
