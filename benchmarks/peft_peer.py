"""The PEFT peer of step_cost.py: one re-training step of Hugging Face PEFT LoRA on the PyTorch T5.

LoRA r=8, alpha 16, no LoRA dropout, on the self-attention q and v of every block (the reference's
`lora.json`, the T5 backbone's `lora_qv_r8` baseline), on a randomly initialised `transformers` T5
of the same shape, dtype and batch as the JAX side. One step = forward with labels (HF's mean token
cross-entropy, dropout on) + backward + clip to global norm 2 + AdamW (lr 3e-4, weight decay 0).
torch, transformers and peft are optional: `missing_peer_packages` says which one is missing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

# Idle OpenMP threads sleep instead of spinning (unless the user chose): on a shared CPU the spinning
# made torch's 2-thread step 4-9x slower than its 1-thread step (measured); must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# PEFT matches a string target as a full-match regex on the module name: self-attention only, as in
# the reference (a plain ["q", "v"] would also adapt the decoder's cross-attention q and v).
SELF_ATTENTION_QV = r".*\.SelfAttention\.(q|v)"


def missing_peer_packages() -> str | None:
    """None when torch, transformers and peft import; else a one-line reason naming the fix."""
    for name in ("torch", "transformers", "peft"):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed: pip install -e '.[bench]' to measure the PEFT peer"
    return None


def peer_step(
    shape: dict[str, Any],
    batch: dict[str, np.ndarray],
    dtype: str,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One PEFT LoRA re-training step as a callable that returns when the step is done.

    Args:
      shape: Hugging Face T5Config fields, e.g. the JAX model's `T5Config.to_hf_dict()`.
      batch: int arrays input_ids, attention_mask [b, src] and labels, decoder_attention_mask [b, tgt].
      dtype: 'float32' or 'bfloat16' (weights and activations).
      device: torch device ('cpu' or 'cuda').
    Returns:
      (step, facts) with facts = {'trainable_params', 'torch_threads', 'device', 'versions'}.
      Call `missing_peer_packages()` first: this needs torch, transformers and peft.
    """
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(**shape)
    model = transformers.T5ForConditionalGeneration(config).to(device=device, dtype=getattr(torch, dtype))
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=SELF_ATTENTION_QV, bias="none")
    with warnings.catch_warnings():  # transformers' deprecation notices, raised inside peft
        warnings.simplefilter("ignore", FutureWarning)
        model = peft.get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    inputs = {name: torch.tensor(np.asarray(value), dtype=torch.long, device=device) for name, value in batch.items()}

    def step() -> None:
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()

    facts = {
        "trainable_params": int(sum(p.numel() for p in trainable)),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    return step, facts
