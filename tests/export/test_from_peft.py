"""from_peft: an adapter that PEFT itself made and saved, read back as candidates and deltas, gives PEFT's outputs."""

from __future__ import annotations

import json

import numpy as np
import peft
import pytest
import torch
import transformers

from export_cases import ATOL, BERT_RULES, bert_batch, flax_bert_outputs, max_difference, retrained, torch_inputs
from s3delta_jax.deltas import delta_param_count
from s3delta_jax.export import ExportError, export_peft, from_peft


@pytest.fixture(scope="module")
def peft_made(bert_backbone, tmp_path_factory):
    """(PEFT's model, its saved directory): LoRA on query and value (value with its own r and alpha),
    rsLoRA scaling and LoRA biases, lora_B and the biases set non-zero."""
    torch.manual_seed(0)
    base = transformers.AutoModel.from_pretrained(bert_backbone.checkpoint_dir, add_pooling_layer=False)
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["query", "value"], rank_pattern={"value": 3},
                             alpha_pattern={"value": 4}, use_rslora=True, lora_bias=True, lora_dropout=0.1)
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.2)
    directory = tmp_path_factory.mktemp("peft-made")
    model.save_pretrained(directory)
    return model.eval(), str(directory)


def test_from_peft_reproduces_peft_outputs(bert_backbone, peft_made):
    model, directory = peft_made
    imported = from_peft(directory, bert_backbone)
    by_type = {t: [c for c in imported.candidates if c.delta_type == t] for t in ("lora", "bitfit")}
    assert len(by_type["lora"]) == len(by_type["bitfit"]) == 4  # query and value of 2 layers
    value = next(c for c in by_type["lora"] if c.position.name.endswith("value"))
    assert value.kwargs == {"r": 3, "alpha": pytest.approx(4 / np.sqrt(3) * 3)}
    assert delta_param_count(imported.delta) == imported.structure.total_size == sum(c.size for c in imported.candidates)

    batch = bert_batch(bert_backbone.config.vocab_size)
    case = retrained(bert_backbone, BERT_RULES)
    hidden, _ = flax_bert_outputs(case, batch, imported.candidates, imported.delta)
    with torch.no_grad():
        expected = model(**torch_inputs(batch)).last_hidden_state.numpy()
    print(f"from_peft: max |flax - peft| {max_difference(hidden, expected):.2e}")
    np.testing.assert_allclose(hidden, expected, rtol=0, atol=ATOL)
    assert max_difference(hidden, flax_bert_outputs(case, batch, [], {})[0]) > 0.05


def test_from_peft_refuses_what_is_not_plain_lora(bert_backbone, peft_made, tmp_path):
    case = retrained(bert_backbone, BERT_RULES, task_name="mrpc")
    export_peft(case, str(tmp_path / "ours"))  # its LNFit goes through modules_to_save
    with pytest.raises(ExportError, match="modules_to_save=.*LoRA"):
        from_peft(str(tmp_path / "ours"), bert_backbone)

    _, directory = peft_made
    config = json.loads(open(f"{directory}/adapter_config.json").read())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExportError, match="use_dora=True"):
        from_peft(str(tmp_path / "dora"), bert_backbone)
