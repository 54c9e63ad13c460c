"""Session-wide fixtures: the environment of every test that starts the programs in a subprocess."""

from __future__ import annotations

import os

import pytest

# LLVM -O0 halves the compile time of the search step. The tests check what the programs compute and
# write, not how fast; every run (references included) uses it, so their numbers compare.
FAST_COMPILE = "--xla_backend_optimization_level=0"
# The tests' own process too (set before any test module imports jax): its compiles take about a
# quarter less time (tests/search/test_search_step.py and tests/deltas/test_scan.py: 126 s against 167 s).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict:
    """Offline, with one JAX compilation cache for every run of the session, on every xdist worker
    (many runs compile the same steps), holding every program however quickly it compiled (a rerun of
    the smoke search: 27.6 s against 31.0 s with jax's default of programs over 1 s), and FAST_COMPILE
    as the only XLA flag."""
    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "xla-cache"
    cache.mkdir(exist_ok=True)
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", XLA_FLAGS=FAST_COMPILE,
                JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
