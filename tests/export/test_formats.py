"""Merged checkpoints and PEFT adapters against PyTorch transformers and PEFT: each reproduces our Flax
model with the deltas injected, on padded batches, and the two exports agree."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from export_cases import (
    ATOL, BERT_RULES, SPIECE, T5_BITFIT_RULES, T5_RULES, bert_batch, flax_bert_outputs, flax_t5_logits, max_difference,
    retrained, t5_batch, torch_inputs,
)
from s3delta_jax.export import AdapterMismatch, ExportError, export_merged, export_peft, torch_classifier
from s3delta_jax.export.peft_format import ADAPTER_WEIGHTS, build_adapter, check_with_peft


def hf_t5_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(**torch_inputs(batch)).logits.numpy()


def t5_with_adapter(base_dir: str, adapter_dir: str):
    base = transformers.T5ForConditionalGeneration.from_pretrained(base_dir, attn_implementation="eager")
    return peft.PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.fixture(scope="module")
def t5_case(t5_backbone):
    return retrained(t5_backbone, T5_RULES)


@pytest.fixture(scope="module")
def bert_case(bert_backbone):
    return retrained(bert_backbone, BERT_RULES, task_name="mrpc")


def test_t5_merged_and_peft_reproduce_the_injected_model(t5_case, tmp_path):
    batch = t5_batch(t5_case.backbone.config.vocab_size)
    ours = flax_t5_logits(t5_case, batch)
    assert max_difference(ours, flax_t5_logits(t5_case, batch, deltas=False)) > 0.05  # the deltas matter

    merged_report = export_merged(t5_case, str(tmp_path / "merged"))
    merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    merged_logits = hf_t5_logits(merged.eval(), batch)
    export_peft(t5_case, str(tmp_path / "peft"))
    peft_logits = hf_t5_logits(t5_with_adapter(t5_case.backbone.checkpoint_dir, str(tmp_path / "peft")), batch)

    print(f"T5 max |merged - flax| {max_difference(merged_logits, ours):.2e}, |peft - flax| "
          f"{max_difference(peft_logits, ours):.2e}, |merged - peft| {max_difference(merged_logits, peft_logits):.2e}")
    np.testing.assert_allclose(merged_logits, ours, rtol=0, atol=ATOL)
    np.testing.assert_allclose(peft_logits, ours, rtol=0, atol=ATOL)
    np.testing.assert_allclose(merged_logits, peft_logits, rtol=0, atol=ATOL)
    assert merged_report.left_out == []
    if SPIECE.is_file():
        assert (tmp_path / "merged" / "spiece.model").read_bytes() == SPIECE.read_bytes()
        assert "spiece.model" in merged_report.files


def test_t5_adapter_layout_follows_peft(t5_case, tmp_path):
    export_peft(t5_case, str(tmp_path / "peft"))
    tensors = load_file(str(tmp_path / "peft" / ADAPTER_WEIGHTS))
    q = "base_model.model.encoder.block.0.layer.0.SelfAttention.q"
    assert tensors[f"{q}.lora_A.weight"].shape == (2, 32) and tensors[f"{q}.lora_B.weight"].shape == (32, 2)
    # The two LoRAs at encoder.block.0's v are one of rank 3 with scaling 1.
    v = q[:-1] + "v"
    assert tensors[f"{v}.lora_A.weight"].shape == (3, 32)
    assert "base_model.model.encoder.final_layer_norm.weight" in tensors  # LNFit, folded, in modules_to_save
    config = peft.LoraConfig.from_pretrained(str(tmp_path / "peft"))
    assert config.rank_pattern[v.removeprefix("base_model.model.")] == 3
    assert config.alpha_pattern[v.removeprefix("base_model.model.")] == 3.0


def test_t5_bitfit_goes_into_peft_lora_biases_and_merged_refuses_it(t5_backbone, tmp_path):
    case = retrained(t5_backbone, T5_BITFIT_RULES, seed=1)
    batch = t5_batch(case.backbone.config.vocab_size)
    export_peft(case, str(tmp_path / "peft"))
    peft_logits = hf_t5_logits(t5_with_adapter(case.backbone.checkpoint_dir, str(tmp_path / "peft")), batch)
    ours = flax_t5_logits(case, batch)
    print(f"T5 with BitFit: max |peft - flax| {max_difference(peft_logits, ours):.2e}")
    np.testing.assert_allclose(peft_logits, ours, rtol=0, atol=ATOL)

    with pytest.raises(ExportError) as refusal:
        export_merged(case, str(tmp_path / "merged"))
    message = str(refusal.value)
    assert "\n" not in message and "bitfit at encoder/block_0/layer_0/SelfAttention/o (the layer has no bias)" in message
    assert "--to peft" in message and "--allow_partial" in message
    assert not (tmp_path / "merged").exists()


def test_bert_merged_and_peft_classifiers_reproduce_ours(bert_case, tmp_path):
    batch = bert_batch(bert_case.backbone.config.vocab_size)
    hidden, logits = flax_bert_outputs(bert_case, batch)
    assert max_difference(hidden, flax_bert_outputs(bert_case, batch, candidates=[])[0]) > 0.05

    export_merged(bert_case, str(tmp_path / "merged"))
    export_peft(bert_case, str(tmp_path / "peft"))
    results = {}
    for name in ("merged", "peft"):
        model = torch_classifier(str(tmp_path / name))
        with torch.no_grad():
            results[name] = (model.encoder(**torch_inputs(batch)).last_hidden_state.numpy(),
                             model(**torch_inputs(batch)).numpy(), model.predict(**torch_inputs(batch)).numpy())
    for name, (torch_hidden, torch_logits, labels) in results.items():
        print(f"BERT {name}: max |hidden - flax| {max_difference(torch_hidden, hidden):.2e}, "
              f"|logits - flax| {max_difference(torch_logits, logits):.2e}")
        np.testing.assert_allclose(torch_hidden, hidden, rtol=0, atol=ATOL)
        np.testing.assert_allclose(torch_logits, logits, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(labels, logits.argmax(-1))
    np.testing.assert_allclose(results["merged"][1], results["peft"][1], rtol=0, atol=ATOL)
    assert os.path.isfile(tmp_path / "merged" / "tokenizer.json")


def test_a_linear_probe_exports_merged_with_its_head_and_peft_refuses_it(bert_backbone, tmp_path):
    """An empty structure (the linear_probe baseline): the merged checkpoint is the base encoder plus our
    trained head, and its torch classifier gives our logits; a PEFT adapter would hold nothing."""
    case = retrained(bert_backbone, [], task_name="mrpc")
    batch = bert_batch(bert_backbone.config.vocab_size)
    _, logits = flax_bert_outputs(case, batch)
    export_merged(case, str(tmp_path / "merged"))
    model = torch_classifier(str(tmp_path / "merged"))
    with torch.no_grad():
        np.testing.assert_allclose(model(**torch_inputs(batch)).numpy(), logits, rtol=0, atol=ATOL)
    with pytest.raises(ExportError, match="export with --to merged"):
        export_peft(case, str(tmp_path / "peft"))
    assert not (tmp_path / "peft").exists() or not any((tmp_path / "peft").iterdir())


def test_an_adapter_with_a_renamed_key_fails_the_check_against_peft(bert_case):
    adapter = build_adapter(bert_case)
    check_with_peft(bert_case.backbone, adapter)
    key = next(k for k in adapter.tensors if k.endswith("lora_B.weight"))
    adapter.tensors[key.replace("encoder.layer", "bert.encoder.layer")] = adapter.tensors.pop(key)
    with pytest.raises(AdapterMismatch, match="missing.*unexpected"):
        check_with_peft(bert_case.backbone, adapter)


def test_allow_partial_leaves_out_what_a_format_cannot_hold_and_says_so(t5_backbone, tmp_path):
    case = retrained(t5_backbone, T5_BITFIT_RULES, seed=1)
    report = export_merged(case, str(tmp_path / "merged"), allow_partial=True)
    bitfits = [c for c in case.candidates if c.delta_type == "bitfit"]
    assert report.left_out == bitfits and len(bitfits) == 5  # o of the 4 self-attentions and 1 q
    assert report.warning.startswith("warning: left out 5 deltas (--allow_partial): bitfit at") and "\n" not in report.warning
    merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    batch = t5_batch(case.backbone.config.vocab_size)
    without_bitfit = dataclasses.replace(case, candidates=[c for c in case.candidates if c not in bitfits])
    np.testing.assert_allclose(hf_t5_logits(merged.eval(), batch), flax_t5_logits(without_bitfit, batch), rtol=0, atol=ATOL)
