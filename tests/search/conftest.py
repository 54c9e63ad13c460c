"""Candidate sizes of the paper's t5-large search spaces (reference section 1.2-1.4)."""

from __future__ import annotations

import numpy as np
import pytest

D_MODEL, D_FF = 1024, 4096
LORA_QKVO, LORA_FF = D_MODEL + D_MODEL, D_MODEL + D_FF  # rank 1: in + out
LRA = 2 * (D_MODEL + D_MODEL // 32) + D_MODEL // 32 + D_MODEL  # 3168
MIX_TOTAL = 1_881_088
LORA_TOTAL = 884_736


def _mix_pass0_block(num_layer_norms: int) -> list[int]:
    """Pass-0 candidates of one block in module order: q,k,v,o, LN(s), wi, wo, LN."""
    attention = [LORA_QKVO, D_MODEL] * 4  # LoRA + BitFit on q, k, v, o
    layer_norm = [D_MODEL, D_MODEL]  # LNFit + BitFit
    ffn = [LORA_FF, D_FF, LORA_FF, D_MODEL]  # wi: LoRA + BitFit(d_ff); wo: LoRA + BitFit(d)
    return attention + layer_norm * (num_layer_norms - 1) + ffn + layer_norm


def t5_large_mix_sizes() -> np.ndarray:
    """The 916 S3PET-M candidate sizes: pass 0 (encoder, final LN, decoder, final LN), then LRAs."""
    pass0 = []
    for num_layer_norms in (2, 3):  # encoder blocks, then decoder blocks
        for _ in range(24):
            pass0 += _mix_pass0_block(num_layer_norms)
        pass0 += [D_MODEL, D_MODEL]  # final_layer_norm: LNFit + BitFit
    pass1 = [LRA, LRA] * 48  # after SelfAttention and after DenseReluDense of every block
    return np.array(pass0 + pass1, dtype=np.float32)


def t5_large_lora_sizes() -> np.ndarray:
    """The 288 S3PET-L candidate sizes: LoRA r=1 on q, k, v, o, wi, wo of 48 blocks."""
    return np.array(([LORA_QKVO] * 4 + [LORA_FF] * 2) * 48, dtype=np.float32)


@pytest.fixture(scope="session")
def mix_sizes() -> np.ndarray:
    sizes = t5_large_mix_sizes()
    assert sizes.shape == (916,) and sizes.sum() == MIX_TOTAL
    return sizes


@pytest.fixture(scope="session")
def lora_sizes() -> np.ndarray:
    sizes = t5_large_lora_sizes()
    assert sizes.shape == (288,) and sizes.sum() == LORA_TOTAL
    return sizes
