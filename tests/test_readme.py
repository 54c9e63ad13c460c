"""The README's library example runs as written and finds a structure within its budget."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_custom_model_example_runs_and_respects_its_budget():
    (example,) = readme_python_blocks()
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    chosen, space = namespace["chosen"], namespace["space"]
    assert 0 < len(chosen) < len(space.candidates)
    assert sum(c.size for c in chosen) <= 300
    assert namespace["logits"].shape == (8, 2)
