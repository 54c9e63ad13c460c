"""Which runs a structures benchmark makes, and how they are split among parallel processes.

Per seed and budget: the searched structure (search, then re-training) and one or more random
structures of the same budget (draws 0, 1, ...; and, with the peers, PEFT AdaLoRA at that budget); per
seed only: each manual structure and the PEFT LoRA peer, whose size does not depend on the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from structures_stats import PEFT_ADALORA, PEFT_LORA, RANDOM, SEARCHED


@dataclasses.dataclass(frozen=True)
class Run:
    """One re-training (or peer) run: a method on a seed, at a budget (None for budget-free methods);
    `draw` numbers the random structures of one seed and budget."""

    method: str
    seed: int
    budget: float | int | None = None
    draw: int = 0

    @property
    def name(self) -> str:
        """The run's directory name, e.g. searched_seed0_budget0.0002, random_seed0_budget0.0002_draw2
        or bitfit_seed3 (draw 0 has no suffix)."""
        suffix = "" if self.budget is None else f"_budget{self.budget:g}"
        return f"{self.method}_seed{self.seed}{suffix}" + (f"_draw{self.draw}" if self.draw else "")


def make_plan(seeds: Sequence[int], budgets: Sequence[float | int], manual: Sequence[str],
              peers: bool, random_draws: int = 1) -> list[Run]:
    """Every run, seed by seed: first the budget-free ones (so that a seed's LoRA parity is known
    early), then per budget the searched run, `random_draws` random structures and the AdaLoRA run."""
    runs = []
    for seed in seeds:
        runs += [Run(name, seed) for name in manual]
        if peers:
            runs.append(Run(PEFT_LORA, seed))
        for budget in budgets:
            runs.append(Run(SEARCHED, seed, budget))
            runs += [Run(RANDOM, seed, budget, draw) for draw in range(random_draws)]
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
