"""The paper's search spaces and the reference's hand-designed baselines, as rules on T5's module names.

Search spaces (paper Table 1; t5-large with the vocabulary resized to 32100):
  s3pet_mix       S3PET-M: LoRA r=1 + BitFit on self-attention q/k/v/o and FFN wi/wo, LNFit + BitFit
                  on every norm, then a low-rank adapter after every self-attention and FFN block (916)
  s3pet_lora      S3PET-L: LoRA r=1 on the same six linears only (288)
  mix_all_linear  the mix space plus LoRA + BitFit on the cross-attention q/k/v/o

Baselines (paper Table 2; the reference's structure_config/*.json), each a one-pass space:

| baseline        | reference file  | modules                                         | params    |
|-----------------|-----------------|-------------------------------------------------|-----------|
| lora_qv_r1      | lora_rank1.json | LoRA r=1 on self-attention q, v (96)            | 196,608   |
| lora_qv_r8      | lora.json       | LoRA r=8 on self-attention q, v (96)            | 1,572,864 |
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

from s3delta_jax.deltas.spaces import Rule, Space

# wi matches v1.0's single wi and v1.1's wi_0 / wi_1.
SELF_LINEARS = r"(SelfAttention/(q|k|v|o)|DenseReluDense/(wi|wi_0|wi_1|wo))"
ALL_LINEARS = r"((SelfAttention|EncDecAttention)/(q|k|v|o)|DenseReluDense/(wi|wi_0|wi_1|wo))"
NORMS = r"(layer_norm|final_layer_norm)"
BLOCKS = r"(SelfAttention|DenseReluDense)"
LM_HEAD = r"(lm_head|shared@attend)"


def _mix(linears: str) -> Space:
    return (
        (
            Rule(linears, ("linear",), "lora", {"r": 1}),
            Rule(linears, ("linear",), "bitfit"),
            Rule(NORMS, ("norm",), "lnfit"),
            Rule(NORMS, ("norm",), "bitfit"),
        ),
        (Rule(BLOCKS, ("block",), "low_rank_adapter"),),
    )


def _lora_qv(r: int) -> Space:
    """LoRA (alpha 16) on every self-attention query and value."""
    return ((Rule(r"SelfAttention/(q|v)", ("linear",), "lora", {"r": r}),),)


SPACES: dict[str, Space] = {
    "s3pet_mix": _mix(SELF_LINEARS),
    "s3pet_lora": ((Rule(SELF_LINEARS, ("linear",), "lora", {"r": 1}),),),
    "mix_all_linear": _mix(ALL_LINEARS),
}

BASELINES: dict[str, Space] = {
    "lora_qv_r1": _lora_qv(1),
    "lora_qv_r8": _lora_qv(8),
    "adapter": ((Rule(BLOCKS, ("block",), "adapter", {"bottleneck": 24}),),),
    "adapter_lr": ((Rule(BLOCKS, ("block",), "low_rank_adapter"),),),
    "bitfit": ((Rule(SELF_LINEARS, ("linear",), "bitfit"), Rule(NORMS, ("norm",), "bitfit"),
                Rule(LM_HEAD, ("linear",), "bitfit")),),
    "lnfit": ((Rule(NORMS, ("norm",), "lnfit"),),),
}
