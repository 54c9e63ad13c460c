"""The final structure: which candidates to keep, from their gate probabilities (host-side numpy).

Three strategies, each returning a bool mask [N] with sum(sizes[mask]) <= budget:
  greedy:   the reference: walk candidates by p descending (ties keep candidate order), take a
            candidate if it still fits, otherwise skip it and go on.
  knapsack: the paper's wording, "highest sum p within the budget": exact 0/1 knapsack.
  random:   the paper's random-structure baseline: uniformly random candidates that fit.
"""

from __future__ import annotations

from functools import reduce
from math import gcd

import numpy as np
from numpy.typing import ArrayLike

STRATEGIES = ("greedy", "knapsack", "random")
# Upper bound on the knapsack's N x (capacity + 1) table of choices (bytes, one bool each).
MAX_KNAPSACK_TABLE = 500_000_000


def _as_sizes(sizes: ArrayLike, budget: float) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1:
        raise ValueError(f"sizes must be a 1-D array of parameter counts, got shape {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError("every candidate size must be a positive finite parameter count; drop empty candidates")
    if not np.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a non-negative parameter count, got {budget}")
    return sizes


def _as_probabilities(p: ArrayLike, sizes: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != sizes.shape:
        raise ValueError(f"p has shape {p.shape} but sizes has shape {sizes.shape}; pass one p per candidate")
    if not np.all(np.isfinite(p)):
        raise ValueError("p contains NaN or infinite values; check the gate parameters alpha")
    return p


def _take_in_order(order: np.ndarray, sizes: np.ndarray, budget: float) -> np.ndarray:
    """Walks candidates in `order`, taking each one that still fits in the budget. -> bool[N]."""
    mask = np.zeros(sizes.shape, dtype=bool)
    total = 0.0
    for i in order:
        if total + sizes[i] <= budget:
            total += sizes[i]
            mask[i] = True
    return mask


def select_greedy(p: ArrayLike, sizes: ArrayLike, budget: float) -> np.ndarray:
    """The reference's selection: by p descending (stable: ties keep candidate order), skip what
    does not fit and continue. p, sizes: [N]. Returns bool[N]."""
    sizes = _as_sizes(sizes, budget)
    p = _as_probabilities(p, sizes)
    return _take_in_order(np.argsort(-p, kind="stable"), sizes, budget)


def select_knapsack(p: ArrayLike, sizes: ArrayLike, budget: float) -> np.ndarray:
    """The subset with the largest sum p whose sizes sum to at most the budget (exact 0/1 knapsack).

    Dynamic programming over capacity in units of g = gcd(sizes): capacity floor(budget / g),
    O(N x capacity) time and an N x (capacity + 1) bool table (the t5-large mix space, g = 32,
    B = 102,458: 916 x 3,202). Sizes must be integers. p, sizes: [N]. Returns bool[N].
    """
    sizes = _as_sizes(sizes, budget)
    p = _as_probabilities(p, sizes)
    if not np.all(sizes == np.round(sizes)):
        raise ValueError("knapsack selection needs integer candidate sizes; use strategy 'greedy' for fractional sizes")
    int_sizes = sizes.astype(np.int64)
    unit = reduce(gcd, int_sizes.tolist(), 0) or 1
    weights = int_sizes // unit
    capacity = int(budget // unit)
    if len(weights) * (capacity + 1) > MAX_KNAPSACK_TABLE:
        raise ValueError(
            f"knapsack table of {len(weights)} x {capacity + 1} entries is too large (sizes share only "
            f"the factor {unit}); use strategy 'greedy' or a smaller budget"
        )
    # best[c]: the largest sum p of the candidates seen so far with total weight <= c.
    best = np.zeros(capacity + 1)
    took = np.zeros((len(weights), capacity + 1), dtype=bool)
    for i, (w, value) in enumerate(zip(weights, p)):
        if w > capacity:
            continue
        with_i = best[: capacity + 1 - w] + value
        took[i, w:] = with_i > best[w:]
        best[w:] = np.where(took[i, w:], with_i, best[w:])
    mask = np.zeros(len(weights), dtype=bool)
    c = capacity
    for i in range(len(weights) - 1, -1, -1):
        if took[i, c]:
            mask[i] = True
            c -= weights[i]
    return mask


def select_random(seed_or_rng: int | np.random.Generator | None, sizes: ArrayLike, budget: float) -> np.ndarray:
    """The paper's random baseline: candidates in a uniformly random order, each taken if it fits.

    Same distribution as the reference's loop (draw uniformly among the unchosen candidates that
    still fit, until none fits): a candidate passed over never fits later, as the remaining budget
    only shrinks. Afterwards no unchosen candidate fits in the remaining budget. Returns bool[N].
    """
    sizes = _as_sizes(sizes, budget)
    rng = np.random.default_rng(seed_or_rng)
    return _take_in_order(rng.permutation(len(sizes)), sizes, budget)


def select(
    strategy: str,
    p: ArrayLike | None,
    sizes: ArrayLike,
    budget: float,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Dispatches to select_{greedy, knapsack, random}; p is ignored (may be None) for "random"."""
    if strategy == "random":
        return select_random(seed, sizes, budget)
    if strategy == "greedy":
        return select_greedy(p, sizes, budget)
    if strategy == "knapsack":
        return select_knapsack(p, sizes, budget)
    raise ValueError(f"unknown selection strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
