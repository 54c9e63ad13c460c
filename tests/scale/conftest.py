"""Fixtures of the scale tests: an offline environment with one compilation cache, and the
one-device reference run.

Independent runs are started together and awaited by the tests that need them, so that the two
cores of a small machine compile two programs at once.
"""

from __future__ import annotations

import os
import sys

import pytest

from scale_runs import ROOT, SMOKE_OVERRIDES, Job, device_env


@pytest.fixture(scope="session")
def scale_env(tmp_path_factory) -> dict:
    """Offline, with one compilation cache for every run of the session (many compile the same step)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla-cache")))
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, scale_env) -> Job:
    """The smoke search on one device, as a user runs it (run_search.py)."""
    root = tmp_path_factory.mktemp("one-device")
    args = [sys.executable, str(ROOT / "run_search.py"), f"--config={ROOT / 'configs/mrpc.py'}:smoke",
            f"--workdir={root / 'run'}", *(f"--config.{field}={value}" for field, value in SMOKE_OVERRIDES.items())]
    return Job(args, device_env(scale_env, 1), root / "log", workdir=root / "run")
