"""Reference Hugging Face (PyTorch) T5 models for the parity tests: tiny, random, one per family.

Uneven depths (3 encoder, 2 decoder blocks), few buckets and a short max distance so that the
logarithmic position buckets are exercised with short sequences.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

TINY = dict(
    vocab_size=120,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=3,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    decoder_start_token_id=0,
)
# Larger random weights make float32 itself drift from float64 by more than the 1e-4 parity bound.
WEIGHT_STD = 0.1
FAMILIES = {
    "relu_tied": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "gated_untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    family: str
    model: Any  # transformers.T5ForConditionalGeneration, eval mode
    directory: Path  # its save_pretrained output (config.json + model.safetensors)

    @property
    def tied(self) -> bool:
        return FAMILIES[self.family]["tie_word_embeddings"]


def build_hf_t5(family: str, seed: int = 0):
    """A random HF T5 with non-trivial layer-norm scales and (untied family) a separate lm_head."""
    torch.manual_seed(seed)
    config = transformers.T5Config(**TINY, **FAMILIES[family], attn_implementation="eager")
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, WEIGHT_STD)
        if not FAMILIES[family]["tie_word_embeddings"]:
            # transformers 5 ties lm_head to shared; a separate Parameter unties it (and is saved).
            model.lm_head.weight = torch.nn.Parameter(WEIGHT_STD * torch.randn(TINY["vocab_size"], TINY["d_model"]))
    return model


def hf_forward(model, batch: dict[str, np.ndarray], **kwargs):
    """Runs the HF model without gradients on numpy inputs."""
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in batch.items()}, **kwargs)
