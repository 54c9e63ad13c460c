"""S3PET's search spaces and the paper's manual baselines, as rules on BERT's module names.

Patterns match the end of a position's Flax path (`encoder/layer_3/attention/self/query`). The mix
space carries S3PET-M (the T5 `s3pet_mix`) over to BERT / RoBERTa:

  pass 0: LoRA (r = 1) and BitFit on the six linears of every layer (attention query, key, value and
          output projection; feed-forward intermediate and output), LNFit and BitFit on every LayerNorm
          (the embeddings' one included);
  pass 1: a low-rank adapter after the attention and after the feed-forward block: on the output of
          their output projections, before the residual sum and LayerNorm (Houlsby's placement; in T5
          the SelfAttention / DenseReluDense blocks end with that projection too).

For hidden H, intermediate I and L layers (MiniLM-L6: H = 384, I = 1536, L = 6) the mix space has
6L LoRA (L (4 (H+H) + (H+I) + (I+H)) = 41,472 parameters), 6L + 2L + 1 BitFit (25,728), 2L + 1
LNFit (4,992) and 2L low-rank adapters (14,256): 110 candidates, 86,448 parameters on MiniLM-L6.
`s3pet_lora` is LoRA r = 1 on the six linears alone.

Every baseline is a subset of the mix space, at its natural size:
  bitfit      BitFit on every linear and LayerNorm   L (4H + I + H + 2H) + H    25,728
  lnfit       LNFit on every LayerNorm               (2L + 1) H                  4,992
  lora_qv_r1  LoRA r = 1 on query and value          2 L (H + H)                 9,216
  adapter_lr  low-rank adapters (reduction 32)       2 L (2 (H + H/32) + H/32 + H)   14,256
  linear_probe  no module: only the task head trains (pooling, dropout, one Dense)          0
"""

from __future__ import annotations

from s3delta_jax.deltas.spaces import Rule, Space

ATTENTION_LINEARS = r"attention/(self/(query|key|value)|output/dense)"
FEED_FORWARD_LINEARS = r"layer_\d+/(intermediate|output)/dense"
LINEARS = rf"({ATTENTION_LINEARS}|{FEED_FORWARD_LINEARS})"
NORMS = r"LayerNorm"
# The last linear of the attention and of the feed-forward block: low-rank adapters act on its output.
BLOCK_OUTPUTS = r"(attention/output|layer_\d+/output)/dense"

SPACES: dict[str, Space] = {
    "s3pet_mix": (
        (
            Rule(LINEARS, ("linear",), "lora", {"r": 1}),
            Rule(LINEARS, ("linear",), "bitfit"),
            Rule(NORMS, ("norm",), "lnfit"),
            Rule(NORMS, ("norm",), "bitfit"),
        ),
        (Rule(BLOCK_OUTPUTS, ("linear",), "low_rank_adapter"),),
    ),
    "s3pet_lora": ((Rule(LINEARS, ("linear",), "lora", {"r": 1}),),),
}

BASELINES: dict[str, Space] = {
    "bitfit": ((Rule(LINEARS, ("linear",), "bitfit"), Rule(NORMS, ("norm",), "bitfit")),),
    "lnfit": ((Rule(NORMS, ("norm",), "lnfit"),),),
    "lora_qv_r1": ((Rule(r"attention/self/(query|value)", ("linear",), "lora", {"r": 1}),),),
    "adapter_lr": ((Rule(BLOCK_OUTPUTS, ("linear",), "low_rank_adapter"),),),
    "linear_probe": (),
}
