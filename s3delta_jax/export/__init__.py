"""Exports of a re-trained structure that others load: a merged Hugging Face checkpoint, a PEFT adapter, and back.

    python -m s3delta_jax.export --workdir RETRAIN_WORKDIR --to merged --out DIR   # or --to peft

    from s3delta_jax import export
    retrained = export.load_retrained(workdir)             # or export.Retrained(backbone, params, candidates, delta, ...)
    export.export_merged(retrained, "merged/")             # T5ForConditionalGeneration / BertModel + head files
    export.export_peft(retrained, "adapter/")              # peft.PeftModel.from_pretrained(base, "adapter/")
    model = export.torch_classifier("merged/")             # an encoder's exported classifier in PyTorch
    imported = export.from_peft("adapter/", backbone)      # candidates + delta weights on the backbone

`torch_classifier` imports torch when first used.
"""

from typing import Any

from s3delta_jax.export.merged import export_merged
from s3delta_jax.export.output_dir import ExportReport
from s3delta_jax.export.peft_format import AdapterMismatch, PeftImport, export_peft, from_peft
from s3delta_jax.export.refusal import ExportError
from s3delta_jax.export.workdir import Retrained, load_retrained

__all__ = [
    "AdapterMismatch", "ExportError", "ExportReport", "PeftImport", "Retrained", "export_merged", "export_peft",
    "from_peft", "load_retrained", "torch_classifier",
]


def __getattr__(name: str) -> Any:
    if name == "torch_classifier":
        from s3delta_jax.export.torch_head import torch_classifier

        return torch_classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
