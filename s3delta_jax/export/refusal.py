"""`ExportError`, and the one-line refusal of deltas that an export format cannot hold exactly."""

from __future__ import annotations

from collections.abc import Sequence

from s3delta_jax.deltas.positions import CALL
from s3delta_jax.deltas.spaces import Candidate
from s3delta_jax.errors import UserError

LINEAR_TYPES = ("lora", "bitfit", "lnfit")
_LISTED = 4


class ExportError(UserError, ValueError):
    """A workdir, output directory or structure that cannot be exported; the message names the fix."""


def why_not_held(candidate: Candidate) -> str:
    """Why a delta does not fold into its module's parameters (what both export formats need)."""
    position = candidate.position
    if candidate.delta_type not in LINEAR_TYPES:
        return "non-linear"
    if position.method != CALL:
        return "on the tied output projection"
    if candidate.delta_type == "bitfit":
        if position.bias_param is None:
            return f"the {'norm' if position.kind == 'norm' else 'layer'} has no bias"
        return "beside a non-linear delta at that module"
    if candidate.delta_type == "lnfit" and position.scale_param is None:
        return "the norm has no scale"
    return "no parameter of its module to fold it into"


def describe(candidates: Sequence[Candidate]) -> str:
    """'bitfit at encoder/.../q (the layer has no bias), ...' for the first few, then how many more."""
    named = [f"{c.delta_type} at {c.position.name} ({why_not_held(c)})" for c in candidates[:_LISTED]]
    more = len(candidates) - _LISTED
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def settle(unheld: Sequence[Candidate], total: int, what: str, allow_partial: bool,
           alternative: str | None = None) -> list[Candidate]:
    """The deltas to leave out: `unheld` with `allow_partial`, else an ExportError naming them.

    Args:
      unheld: the deltas the format cannot hold exactly.
      total: how many deltas the structure has.
      what: the format, e.g. 'a merged checkpoint'.
      alternative: another format that holds them, e.g. 'export with --to peft', if there is one.
    """
    if unheld and not allow_partial:
        choices = f"{alternative}, or pass" if alternative else "pass"
        raise ExportError(f"{what} cannot hold {len(unheld)} of the {total} re-trained deltas: {describe(unheld)}; "
                          f"{choices} --allow_partial to leave them out")
    return list(unheld)
