"""`export_merged`: a Hugging Face checkpoint of the backbone with the re-trained deltas folded in.

LoRA goes into its kernel (W + alpha/r A B), LNFit into its norm's scale, BitFit into the module's own
bias (deltas/merge.py), so the checkpoint computes what the injected model computes, up to float
rounding. The directory gets config.json, model.safetensors (T5ForConditionalGeneration; BertModel /
RobertaModel without the pooler), the tokenizer's files and, for an encoder, its classifier head
(classifier.safetensors + classifier.json, read by `torch_classifier`: see head.py).

What cannot fold is refused, or left out with `allow_partial`: the adapters (non-linear), BitFit where
the layer has no bias (every T5 linear and norm; a PEFT export holds it on the linears), and deltas on
T5's tied output projection.
"""

from __future__ import annotations

from s3delta_jax.deltas.merge import merge_deltas
from s3delta_jax.export.head import save_head
from s3delta_jax.export.hf_checkpoint import check_family, save_tokenizer
from s3delta_jax.export.output_dir import ExportReport, check_output_dir, staged_output
from s3delta_jax.export.peft_format import is_lora_target
from s3delta_jax.export.refusal import settle
from s3delta_jax.export.workdir import Retrained
from s3delta_jax.models.checkpoint_files import CONFIG_FILE, SAFETENSORS_FILE


def export_merged(retrained: Retrained, out: str, allow_partial: bool = False) -> ExportReport:
    """Writes the merged checkpoint into `out` (absent or empty); ExportError when a delta cannot fold
    (unless `allow_partial`) or `out` holds files, and then nothing is written."""
    backbone = retrained.backbone
    check_family(backbone)
    check_output_dir(out)
    params, unmerged = merge_deltas(retrained.params, retrained.candidates, retrained.delta)
    peft_holds = backbone.checkpoint_dir is not None and all(is_lora_target(c) for c in unmerged)
    left_out = settle(unmerged, len(retrained.candidates), "a merged checkpoint", allow_partial,
                      "export with --to peft (its LoRA biases hold them)" if peft_holds else None)
    with staged_output(out) as staging:
        backbone.save_hf_checkpoint(params, staging)
        files = [CONFIG_FILE, SAFETENSORS_FILE, *save_tokenizer(backbone, staging), *save_head(retrained, staging)]
    return ExportReport(out, files, left_out)
