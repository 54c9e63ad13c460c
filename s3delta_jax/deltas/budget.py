"""The parameter budget B: a ratio of the backbone's parameter count, or an absolute count."""

from __future__ import annotations

import math
from fractions import Fraction

from s3delta_jax.errors import UserError


class BudgetError(UserError, ValueError):
    """A budget that is neither a ratio in (0, 1) nor a positive whole count."""


def budget_params(budget: float | int, backbone_params: int) -> int:
    """B in parameters: ``budget`` < 1 is a ratio of ``backbone_params``, >= 1 an absolute count.

    A ratio is rounded DOWN, so no structure of B parameters exceeds the real-valued budget:
    1.389e-4 of t5-large's 737,639,424 -> 102,458; 3.48e-5 -> 25,669. The ratio is read as the
    decimal it is written as (Fraction of its repr), so float noise cannot drop a parameter.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise BudgetError(f"budget must be a ratio in (0, 1) or a positive parameter count, got {budget!r}")
    if isinstance(backbone_params, bool) or not isinstance(backbone_params, int) or backbone_params < 1:
        raise BudgetError(f"backbone_params must be a positive integer, got {backbone_params!r}")
    if budget < 1:
        return math.floor(Fraction(repr(budget)) * backbone_params)
    if isinstance(budget, float) and not budget.is_integer():
        raise BudgetError(f"an absolute budget must be a whole number of parameters, got {budget!r}")
    return int(budget)
