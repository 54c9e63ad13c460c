"""Which runs a structures benchmark makes, and how they are split among parallel processes.

Per seed and budget: the searched structure (search, then re-training) and a random structure of
the same budget (and, with the peers, PEFT AdaLoRA at that budget); per seed only: each manual
structure and the PEFT LoRA peer, whose size does not depend on the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from structures_stats import PEFT_ADALORA, PEFT_LORA, RANDOM, SEARCHED


@dataclasses.dataclass(frozen=True)
class Run:
    """One re-training (or peer) run: a method on a seed, at a budget (None for budget-free methods)."""

    method: str
    seed: int
    budget: float | int | None = None

    @property
    def name(self) -> str:
        """The run's directory name, e.g. searched_seed0_budget0.0002 or bitfit_seed3."""
        suffix = "" if self.budget is None else f"_budget{self.budget:g}"
        return f"{self.method}_seed{self.seed}{suffix}"


def make_plan(seeds: Sequence[int], budgets: Sequence[float | int], manual: Sequence[str],
              peers: bool) -> list[Run]:
    """Every run, seed by seed: first the budget-free ones (so that a seed's LoRA parity is known
    early), then per budget the searched, the random and the AdaLoRA run."""
    runs = []
    for seed in seeds:
        runs += [Run(name, seed) for name in manual]
        if peers:
            runs.append(Run(PEFT_LORA, seed))
        for budget in budgets:
            runs += [Run(SEARCHED, seed, budget), Run(RANDOM, seed, budget)]
            if peers:
                runs.append(Run(PEFT_ADALORA, seed, budget))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N."""
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: I must be in [0, N)")
    return index, count


def shard(runs: Sequence[Run], index: int, count: int) -> list[Run]:
    """Every count-th run from `index`: the runs of process `index` of `count`."""
    return list(runs[index::count])
