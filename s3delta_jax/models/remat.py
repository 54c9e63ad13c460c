"""The layer rematerialisation policies a config may name (`search.remat`), for any family that
rematerialises its layers (jax.checkpoint per layer)."""

from __future__ import annotations

from collections.abc import Callable

import jax

# "full" stores only each layer's inputs and recomputes the rest in the backward pass; "dots" also
# stores the outputs of its weight matmuls.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
