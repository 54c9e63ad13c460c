"""The parameter / compute dtypes a config may name."""

from __future__ import annotations

import jax.numpy as jnp

from s3delta_jax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class DtypeError(UserError, ValueError):
    """A dtype name that is not supported."""


def parse_dtype(name: str):
    """'float32' or 'bfloat16' -> the jnp dtype."""
    if name not in DTYPES:
        raise DtypeError(f"model.dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]
