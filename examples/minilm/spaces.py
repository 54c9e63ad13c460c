"""The S3PET mix search space and the paper's manual baselines, written as rules on BERT's module names.

Patterns match the end of a position's Flax path (`encoder/layer_3/attention/self/query`).
The mix space carries S3PET-M (paper Table 1, the `s3pet_mix` preset for T5) over to BERT:

  pass 0: LoRA (r = 1) and BitFit on the six linears of every layer (attention query, key, value and
          output projection; feed-forward intermediate and output), LNFit and BitFit on every LayerNorm
          (the embeddings' one included);
  pass 1: a low-rank adapter after the attention and after the feed-forward block: on the output of
          their output projections, before the residual sum and LayerNorm (Houlsby's placement; in T5
          the SelfAttention / DenseReluDense blocks end with that projection too).

Every baseline is a subset of the mix space, at its natural size (for hidden H, intermediate I,
L layers; MiniLM-L6: H = 384, I = 1536, L = 6):
  bitfit      BitFit on every linear and LayerNorm   L (4H + I + H + 2H) + H    25,728
  lnfit       LNFit on every LayerNorm               (2L + 1) H                  4,992
  lora_qv_r1  LoRA r = 1 on query and value          2 L (H + H)                 9,216
  adapter_lr  low-rank adapters (reduction 32)       2 L (2 (H + H/32) + H/32 + H)   14,256
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import s3delta_jax.search as s3

ATTENTION_LINEARS = r"attention/(self/(query|key|value)|output/dense)"
FEED_FORWARD_LINEARS = r"layer_\d+/(intermediate|output)/dense"
LINEARS = rf"({ATTENTION_LINEARS}|{FEED_FORWARD_LINEARS})"
NORMS = r"LayerNorm"
# The last linear of the attention and of the feed-forward block: low-rank adapters act on its output.
BLOCK_OUTPUTS = r"(attention/output|layer_\d+/output)/dense"

MIX_SPACE: tuple[tuple[s3.Rule, ...], ...] = (
    (
        s3.Rule(LINEARS, ("linear",), "lora", {"r": 1}),
        s3.Rule(LINEARS, ("linear",), "bitfit"),
        s3.Rule(NORMS, ("norm",), "lnfit"),
        s3.Rule(NORMS, ("norm",), "bitfit"),
    ),
    (s3.Rule(BLOCK_OUTPUTS, ("linear",), "low_rank_adapter"),),
)

BASELINES: dict[str, tuple[s3.Rule, ...]] = {
    "bitfit": (s3.Rule(LINEARS, ("linear",), "bitfit"), s3.Rule(NORMS, ("norm",), "bitfit")),
    "lnfit": (s3.Rule(NORMS, ("norm",), "lnfit"),),
    "lora_qv_r1": (s3.Rule(r"attention/self/(query|value)", ("linear",), "lora", {"r": 1}),),
    "adapter_lr": (s3.Rule(BLOCK_OUTPUTS, ("linear",), "low_rank_adapter"),),
}


class StructureError(ValueError):
    """A structure with a module that the search space does not hold."""


def structure_mask(candidates: Sequence[s3.Candidate], chosen: Sequence[s3.Candidate]) -> np.ndarray:
    """bool[N]: which of the space's `candidates` are the `chosen` ones (matched by name, type, kwargs, size)."""
    index = {c.name: c for c in candidates}
    mask = np.zeros(len(candidates), dtype=bool)
    for c in chosen:
        twin = index.get(c.name)
        if twin is None or (twin.delta_type, dict(twin.kwargs), twin.size) != (c.delta_type, dict(c.kwargs), c.size):
            raise StructureError(f"{c.name} ({c.delta_type} {dict(c.kwargs)}) is not a candidate of the search space")
        mask[twin.index] = True
    return mask


def baseline_mask(name: str, positions: Sequence[Any], candidates: Sequence[s3.Candidate]) -> np.ndarray:
    """bool[N]: the manual baseline `name` (a key of BASELINES) as a subset of the space's candidates.

    positions: the model's positions (`s3.discover_positions`), over which the baseline's rules expand.
    """
    if name not in BASELINES:
        raise StructureError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return structure_mask(candidates, s3.expand([BASELINES[name]], positions).candidates)
