"""Fixtures of the scale tests: the one-device reference run.

Independent runs are started together and awaited by the tests that need them, so that the two
cores of a small machine compile two programs at once.
"""

from __future__ import annotations

import sys

import pytest

from scale_runs import ROOT, SMOKE_OVERRIDES, Job, device_env


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, subprocess_env) -> Job:
    """The smoke search on one device, as a user runs it (run_search.py)."""
    root = tmp_path_factory.mktemp("one-device")
    args = [sys.executable, str(ROOT / "run_search.py"), f"--config={ROOT / 'configs/mrpc.py'}:smoke",
            f"--workdir={root / 'run'}", *(f"--config.{field}={value}" for field, value in SMOKE_OVERRIDES.items())]
    return Job(args, device_env(subprocess_env, 1), root / "log", workdir=root / "run")
