"""The measuring instrument of step_cost.py: compile a function, warm it up, time it against others.

Functions that are compared are timed round-robin (one call of each in turn, `steps` rounds), so
that a change of machine load during the run (a shared CPU) hits all of them alike and their ratios
stay meaningful. Warm-up runs one function at a time, in the order given, and reads the device's
peak memory after each (a running maximum over the process: list the smallest function first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


def device_peak_bytes() -> int | None:
    """Peak bytes in use on device 0 so far, or None where the backend does not report it (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of an executable, in bytes; `total` = argument + output + temp - alias
    (the buffers the executable needs at once). None where the backend gives no analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    memory = {
        "argument": int(analysis.argument_size_in_bytes),
        "output": int(analysis.output_size_in_bytes),
        "temp": int(analysis.temp_size_in_bytes),
        "alias": int(analysis.alias_size_in_bytes),
        "generated_code": int(analysis.generated_code_size_in_bytes),
    }
    memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
    return memory


class Runner:
    """`fn` jitted and compiled on `args`; each call runs it once and waits for the outputs.

    `args` may hold `jax.ShapeDtypeStruct`s where the runner is only compiled, never called (the
    compile-only mode: compile time and XLA's memory analysis need shapes alone).

    With `threads_state`, `fn(state, *rest) -> (state, metrics)` is a training step: the state is
    donated and each call takes the previous call's state, and `metrics_finite` records whether
    every metric of every call was finite. `output` holds the last call's outputs.
    """

    def __init__(self, fn: Callable, args: tuple, threads_state: bool = False):
        start = time.perf_counter()
        lowered = jax.jit(fn, donate_argnums=0 if threads_state else ()).lower(*args)
        lowered_at = time.perf_counter()
        self.compiled = lowered.compile()
        compiled_at = time.perf_counter()
        self.args, self.threads_state = args, threads_state
        self.output: Any = None
        self.metrics_finite = True
        self.compile_info = {
            "compile_seconds": compiled_at - start,
            "trace_and_lower_seconds": lowered_at - start,
            "xla_compile_seconds": compiled_at - lowered_at,
            "compiled_memory": compiled_memory(self.compiled),
        }

    def __call__(self) -> None:
        self.output = jax.block_until_ready(self.compiled(*self.args))
        if self.threads_state:
            state, metrics = self.output
            self.args = (state, *self.args[1:])
            self.metrics_finite &= all(bool(jnp.all(jnp.isfinite(m))) for m in jax.tree.leaves(metrics))


def warm_up(calls: Mapping[str, Callable[[], None]], warmup: int) -> dict[str, int | None]:
    """Runs each call `warmup` times, one call after another in order; returns the device peak
    bytes read after each one's warm-up (None on CPU)."""
    peaks = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        peaks[name] = device_peak_bytes()
    return peaks


def time_round_robin(calls: Mapping[str, Callable[[], None]], steps: int) -> dict[str, list[float]]:
    """Wall seconds of `steps` calls of each, taken in turns: round r calls every one once."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - began)
    return seconds


def measure_together(runners: Mapping[str, Runner], steps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warms up and times compiled runners against each other (see the module docstring).

    Returns, per name: median_step_seconds, step_seconds, the compile info (compile_seconds,
    trace_and_lower_seconds, xla_compile_seconds, compiled_memory), device_peak_bytes (None on
    CPU), device_peak_exact (whether the peak rose during this runner's warm-up, so it is its own;
    None on CPU) and, for training steps, metrics_finite.
    """
    if warmup < 1:
        raise ValueError(f"warmup must be at least 1 (the device peak is read after it), got {warmup}")
    peak = device_peak_bytes()
    peaks = warm_up(runners, warmup)
    seconds = time_round_robin(runners, steps)
    results = {}
    for name, runner in runners.items():
        exact = None if peaks[name] is None else bool(peak is None or peaks[name] > peak)
        peak = peaks[name]
        results[name] = {
            "median_step_seconds": statistics.median(seconds[name]),
            "step_seconds": seconds[name],
            **runner.compile_info,
            "device_peak_bytes": peaks[name],
            "device_peak_exact": exact,
            **({"metrics_finite": runner.metrics_finite} if runner.threads_state else {}),
        }
    return results
