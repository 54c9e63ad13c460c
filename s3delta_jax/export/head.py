"""An encoder's classifier head, written beside the exported encoder (read back by `torch_head`).

No Hugging Face class computes our head (models/bert/heads.py): BertForSequenceClassification
pools [CLS] through the pooler's dense + tanh, RobertaForSequenceClassification puts dense + tanh +
out_proj on <s>, and neither pools by the masked mean. So the encoder is exported as `BertModel` /
`RobertaModel` weights (merged, or a base model plus a PEFT adapter) and the head goes beside it:

  classifier.safetensors  weight f32[C, H], bias f32[C]  (torch.nn.Linear layout: logits = pooled W^T + b)
  classifier.json         {"pooling": "mean" | "cls", "num_outputs": C, "regression": bool,
                           "task": name, "label_names": [...]}

with h f32[B, L, H] the encoder's last hidden state and m the attention mask [B, L]:
pooled = sum_t m[b, t] h[b, t] / max(sum_t m[b, t], 1) ("mean") or h[b, 0] ("cls").
C is the number of labels, or 1 score for regression (STS-B).
"""

from __future__ import annotations

import json
import os

import numpy as np

from s3delta_jax.export.workdir import Retrained

HEAD_WEIGHTS = "classifier.safetensors"
HEAD_CONFIG = "classifier.json"


def save_head(retrained: Retrained, directory: str) -> list[str]:
    """Writes the head's two files into `directory` (nothing without a head); returns their names."""
    if retrained.extra is None:
        return []
    from safetensors.numpy import save_file

    dense = retrained.extra["classifier"]
    weight = np.ascontiguousarray(np.asarray(dense["kernel"], np.float32).T)
    save_file({"weight": weight, "bias": np.asarray(dense["bias"], np.float32)}, os.path.join(directory, HEAD_WEIGHTS))
    task = retrained.task
    config = {"pooling": retrained.backbone.pooling, "num_outputs": int(weight.shape[0]),
              "regression": not task.label_names, "task": task.name, "label_names": list(task.label_names or [])}
    with open(os.path.join(directory, HEAD_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return [HEAD_WEIGHTS, HEAD_CONFIG]
