"""Budgets: ratio or absolute, rounded down (reference section 2)."""

from __future__ import annotations

import pytest

from s3delta_jax.deltas import BudgetError, budget_params
from s3delta_jax.models import t5

T5_LARGE = 737_639_424


def test_t5_large_backbone_count():
    """The reference counts t5-large with the vocabulary resized to 32100."""
    assert t5.count_params(t5.get_config("t5-large"), vocab_size=32100) == T5_LARGE


@pytest.mark.parametrize(
    "budget, expected",
    [(1.389e-4, 102_458), (3.48e-5, 25_669), (102_458, 102_458), (5000.0, 5000)],
)
def test_budget_params(budget, expected):
    assert budget_params(budget, T5_LARGE) == expected


def test_ratio_is_rounded_down_from_its_decimal_value():
    assert budget_params(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats; 0.7 * 10 is 6.999999999999999
    assert budget_params(0.7, 10) == 7
    assert budget_params(0.25, 10) == 2


@pytest.mark.parametrize("budget", [0, -1e-4, float("nan"), True, "1e-4", 1.5])
def test_bad_budgets(budget):
    with pytest.raises(BudgetError):
        budget_params(budget, T5_LARGE)
