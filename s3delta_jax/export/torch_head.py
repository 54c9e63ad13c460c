"""`torch_classifier(DIR)`: the exported encoder and its head as one PyTorch module (see head.py).

    from s3delta_jax.export import torch_classifier
    model = torch_classifier("exported/")            # a merged export, or a PEFT export (base + adapter)
    logits = model(input_ids, attention_mask, token_type_ids)    # f32[B, C]
    labels = model.predict(input_ids, attention_mask, token_type_ids)   # int64[B] (scores f32[B] for regression)
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file

from s3delta_jax.export.head import HEAD_CONFIG, HEAD_WEIGHTS

ADAPTER_CONFIG = "adapter_config.json"


class TorchClassifier(torch.nn.Module):
    """encoder -> pooling (masked mean or first token) -> Linear: input_ids, attention_mask,
    token_type_ids int[B, L] -> f32[B, C]. `encoder` returns `last_hidden_state` [B, L, H]."""

    def __init__(self, encoder: torch.nn.Module, pooling: str, classifier: torch.nn.Linear, regression: bool):
        super().__init__()
        self.encoder, self.pooling, self.classifier, self.regression = encoder, pooling, classifier, regression

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        return self.classifier(pooled.float())

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The label ids int64[B] (argmax of the logits), or the scores f32[B] for regression."""
        outputs = self(input_ids, attention_mask, token_type_ids)
        return outputs[:, 0] if self.regression else outputs.argmax(dim=-1)


def torch_classifier(directory: str, encoder: torch.nn.Module | None = None) -> TorchClassifier:
    """The classifier exported to `directory`, in eval mode.

    `encoder` defaults to the directory's own: the merged `BertModel` / `RobertaModel`, or for a PEFT
    export the adapter on its `base_model_name_or_path` (pass `encoder=PeftModel...` to choose the base).
    """
    with open(os.path.join(directory, HEAD_CONFIG)) as f:
        config = json.load(f)
    weights = load_file(os.path.join(directory, HEAD_WEIGHTS))
    classifier = torch.nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
    classifier.load_state_dict(weights)
    encoder = _load_encoder(directory) if encoder is None else encoder
    return TorchClassifier(encoder, config["pooling"], classifier, config["regression"]).eval()


def _load_encoder(directory: str) -> Any:
    import transformers

    adapter_config = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(adapter_config):
        return transformers.AutoModel.from_pretrained(directory, add_pooling_layer=False)
    import peft

    with open(adapter_config) as f:
        base = json.load(f)["base_model_name_or_path"]
    return peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(base, add_pooling_layer=False), directory)
