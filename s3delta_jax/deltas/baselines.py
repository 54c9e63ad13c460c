"""The reference's hand-designed structures (paper Table 2) as candidate lists on a T5's positions.

Each baseline is a one-pass space (the reference's structure_config/*.json) expanded over the
model's positions. On t5-large (vocab resized to 32100):

| baseline        | reference file  | modules                                         | params    |
|-----------------|-----------------|-------------------------------------------------|-----------|
| lora_qv(r=1)    | lora_rank1.json | LoRA on self-attention q, v (96)                | 196,608   |
| lora_qv(r=8)    | lora.json       | LoRA r=8 on self-attention q, v (96)            | 1,572,864 |
| adapter         | adapter.json    | Houlsby adapter (24) after SelfAttention, FFN   | 4,819,200 |
| adapter_lr      | lra.json        | low-rank adapter after SelfAttention, FFN (96)  | 304,128   |
| bitfit          | bitfit.json     | see below                                       | 599,396   |
| lnfit           | lnfit.json      | LNFit on every norm incl. the finals (122)      | 124,928   |

BitFit follows bitfit.json: a bias on the self-attention q/k/v/o and FFN wi/wo outputs, on every
norm output, and on the LM head's output (the logits, vocab 32100). The cross-attention linears
get none: their names do not end with 'SelfAttention.q' etc., and the paper's count (8.13 per
ten-thousand) needs them absent. T5's tied LM head is the ``attend`` call of the shared
embedding (position 'shared@attend'); an untied model's is 'lm_head'. Neither has a bias of its
own, so that BitFit stays an injected delta after merging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from s3delta_jax.deltas.positions import Position
from s3delta_jax.deltas.spaces import T5_BLOCKS, T5_NORMS, T5_SELF_LINEARS, Candidate, Rule, expand

T5_LM_HEAD = r"(lm_head|shared@attend)"


def lora_qv(positions: Sequence[Position], r: int = 8) -> list[Candidate]:
    """LoRA (alpha 16) on every self-attention query and value."""
    return expand([[Rule(r"SelfAttention/(q|v)", ("linear",), "lora", {"r": r})]], positions).candidates


def adapter(positions: Sequence[Position], bottleneck: int = 24) -> list[Candidate]:
    """A Houlsby adapter after every self-attention and feed-forward block."""
    return expand([[Rule(T5_BLOCKS, ("block",), "adapter", {"bottleneck": bottleneck})]], positions).candidates


def adapter_lr(positions: Sequence[Position]) -> list[Candidate]:
    """A low-rank adapter (reduction 32, rank 1) after every self-attention and feed-forward block."""
    return expand([[Rule(T5_BLOCKS, ("block",), "low_rank_adapter")]], positions).candidates


def bitfit(positions: Sequence[Position]) -> list[Candidate]:
    """BitFit on self-attention/FFN linear outputs, every norm output and the LM head (bitfit.json)."""
    rules = [
        Rule(T5_SELF_LINEARS, ("linear",), "bitfit"),
        Rule(T5_NORMS, ("norm",), "bitfit"),
        Rule(T5_LM_HEAD, ("linear",), "bitfit"),
    ]
    return expand([rules], positions).candidates


def lnfit(positions: Sequence[Position]) -> list[Candidate]:
    """LNFit on every norm, the final norms of both stacks included."""
    return expand([[Rule(T5_NORMS, ("norm",), "lnfit")]], positions).candidates


BASELINES: dict[str, Callable[[Sequence[Position]], list[Candidate]]] = {
    "lora_qv_r1": lambda positions: lora_qv(positions, r=1),
    "lora_qv_r8": lambda positions: lora_qv(positions, r=8),
    "adapter": adapter,
    "adapter_lr": adapter_lr,
    "bitfit": bitfit,
    "lnfit": lnfit,
}
