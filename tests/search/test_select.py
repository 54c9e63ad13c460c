"""Final-structure selection: budget feasibility, exactness against brute force, the reference walk."""

from __future__ import annotations

import time

import numpy as np
import pytest

from s3delta_jax.search import select

REAL_SIZES = np.array([1024, 2048, 3168, 4096, 5120])


def _reference_walk(p, sizes, budget):
    """The reference's hard_forward_structure: Python's stable sort by p, reverse=True."""
    order = sorted(range(len(p)), key=lambda i: p[i], reverse=True)
    mask, total = np.zeros(len(p), bool), 0.0
    for i in order:
        if total + sizes[i] <= budget:
            total += sizes[i]
            mask[i] = True
    return mask


def _brute_force_best(p, sizes, budget):
    """max sum p over all 2^N subsets with sum sizes <= budget."""
    n = len(p)
    subsets = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    feasible = subsets @ sizes <= budget
    return (subsets @ p)[feasible].max()


def _random_instance(rng, n, size_pool=None):
    sizes = rng.choice(size_pool, n) if size_pool is not None else rng.integers(1, 60, n)
    p = rng.random(n)
    budget = float(rng.uniform(0.0, 1.1) * sizes.sum())
    return p, sizes, budget


@pytest.mark.parametrize("strategy", select.STRATEGIES)
def test_selection_never_exceeds_budget(strategy):
    rng = np.random.default_rng(0)
    for trial in range(150):
        pool = REAL_SIZES if trial % 2 else None
        p, sizes, budget = _random_instance(rng, int(rng.integers(1, 60)), pool)
        mask = select.select(strategy, p, sizes, budget, seed=trial)
        assert mask.dtype == bool and mask.shape == sizes.shape
        assert sizes[mask].sum() <= budget


def test_knapsack_equals_brute_force_and_beats_greedy():
    rng = np.random.default_rng(1)
    for trial in range(60):
        pool = REAL_SIZES if trial % 3 == 0 else None
        p, sizes, budget = _random_instance(rng, int(rng.integers(1, 15)), pool)
        knapsack = select.select_knapsack(p, sizes, budget)
        greedy = select.select_greedy(p, sizes, budget)
        assert sizes[knapsack].sum() <= budget
        np.testing.assert_allclose(p[knapsack].sum(), _brute_force_best(p, sizes, budget), rtol=1e-12)
        assert p[knapsack].sum() >= p[greedy].sum() - 1e-12


def test_knapsack_beats_greedy_where_greedy_is_suboptimal():
    # Greedy takes the 0.9 candidate (size 6) and then nothing fits; two 0.8 candidates fit together.
    p, sizes = np.array([0.9, 0.8, 0.8]), np.array([6, 5, 5])
    np.testing.assert_array_equal(select.select_greedy(p, sizes, 10), [True, False, False])
    np.testing.assert_array_equal(select.select_knapsack(p, sizes, 10), [False, True, True])


def test_knapsack_on_the_t5_large_mix_space(mix_sizes):
    rng = np.random.default_rng(2)
    sizes = mix_sizes.astype(np.int64)
    budget = 102_458.0
    p = 1 / (1 + np.exp(-(rng.standard_normal(len(sizes)) * 3 - 3)))
    start = time.perf_counter()
    knapsack = select.select_knapsack(p, sizes, budget)
    seconds = time.perf_counter() - start
    greedy = select.select_greedy(p, sizes, budget)
    assert sizes[knapsack].sum() <= budget
    assert p[knapsack].sum() >= p[greedy].sum()
    assert seconds < 10.0, f"knapsack on N=916, B=102,458 took {seconds:.1f} s"


def test_greedy_matches_the_reference_walk_with_ties():
    # Ties decide: by candidate order, 0 (size 6) is taken before 2 (size 5); then 1 fits, 3 does not.
    p, sizes = np.array([0.9, 0.5, 0.9, 0.5]), np.array([6, 4, 5, 1])
    np.testing.assert_array_equal(select.select_greedy(p, sizes, 10), [True, True, False, False])
    # Skip what does not fit and continue: 0 is skipped, 4 still fits at the end.
    p, sizes = np.array([0.5, 0.9, 0.5, 0.9, 0.1]), np.array([3, 5, 2, 4, 1])
    np.testing.assert_array_equal(select.select_greedy(p, sizes, 10), [False, True, False, True, True])
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(1, 80))
        p = rng.choice([0.1, 0.3, 0.3001, 0.7], n)  # many ties
        sizes = rng.choice(REAL_SIZES, n)
        budget = float(rng.uniform(0, 1) * sizes.sum())
        np.testing.assert_array_equal(select.select_greedy(p, sizes, budget), _reference_walk(p, sizes, budget))


def test_random_fills_the_budget():
    rng = np.random.default_rng(4)
    for trial in range(100):
        _, sizes, budget = _random_instance(rng, int(rng.integers(1, 80)), REAL_SIZES if trial % 2 else None)
        mask = select.select_random(trial, sizes, budget)
        remaining = budget - sizes[mask].sum()
        assert remaining >= 0
        assert not np.any(sizes[~mask] <= remaining)


def test_random_is_uniform_and_seeded():
    n, k, trials = 10, 3, 4000
    sizes = np.full(n, 1024)
    rng = np.random.default_rng(5)
    counts = sum(select.select_random(rng, sizes, k * 1024).astype(int) for _ in range(trials))
    rate = k / n
    assert np.all(np.abs(counts / trials - rate) <= 5 * np.sqrt(rate * (1 - rate) / trials))
    np.testing.assert_array_equal(select.select_random(7, sizes, 5000), select.select_random(7, sizes, 5000))


def test_dispatcher_and_input_errors():
    p, sizes = np.array([0.2, 0.9]), np.array([1, 2])
    np.testing.assert_array_equal(select.select("greedy", p, sizes, 2), [False, True])
    assert select.select("random", None, sizes, 3, seed=0).all()
    with pytest.raises(ValueError, match="greedy, knapsack, random"):
        select.select("topk", p, sizes, 2)
    with pytest.raises(ValueError, match="integer"):
        select.select_knapsack(p, np.array([1.5, 2.0]), 2)
    with pytest.raises(ValueError, match="one p per candidate"):
        select.select_greedy(p[:1], sizes, 2)
    with pytest.raises(ValueError, match="too large"):
        select.select_knapsack(np.full(1000, 0.5), np.arange(1, 1001) * 2 + 1, 1e6)
