"""The README's library examples run as written: a structure within its budget, then its re-training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_custom_model_examples_run_respect_the_budget_and_retrain():
    search_example, retrain_example = readme_python_blocks()
    namespace: dict = {}
    exec(compile(search_example, str(README), "exec"), namespace)
    chosen, space = namespace["chosen"], namespace["space"]
    assert 0 < len(chosen) < len(space.candidates)
    assert sum(c.size for c in chosen) <= 300
    exec(compile(retrain_example, str(README), "exec"), namespace)
    assert namespace["logits"].shape == (8, 2)
    trained = namespace["state"].delta
    fresh = namespace["retrainer"].init(namespace["jax"].random.PRNGKey(3)).delta
    moved = [not np.array_equal(a, b) for a, b in zip(namespace["jax"].tree.leaves(trained), namespace["jax"].tree.leaves(fresh))]
    assert any(moved), "re-training changed no delta weight"
