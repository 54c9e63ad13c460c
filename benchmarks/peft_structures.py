"""PyTorch peers of the structures benchmark: Hugging Face PEFT LoRA and AdaLoRA on the same data.

    results = train_peer("peft_lora_qv_r1", config, backbone, workdir)   # or "peft_adalora"

Both train a `transformers` encoder of the backbone's architecture and weights (its checkpoint
directory; random weights of the same shape for a random-init backbone), on the GPU where torch sees
one, under the same head as ours (models/bert/heads.py: masked mean or first-token pooling, dropout
at the encoder's hidden dropout rate, one Linear initialised as Flax's Dense; trained in every run
and counted in no parameter total), on the same batches in
the same order (data.TrainBatches of the seed's paper train split, config.seed), with the config's
re-training schedule: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), the learning rate decaying
linearly to 0 over epochs x batches, global-norm clipping, evaluation every `eval_every` steps and
at the end, test metrics at the best (>=) validation evaluation.

  peft_lora_qv_r1  LoRA r = 1, alpha = our LoRA's alpha (so the same scale alpha / r), no dropout, on
                   the self-attention query and value of every layer: our `lora_qv_r1` baseline,
                   2 L (H + H) parameters. The parity check compares the two.
  peft_adalora     AdaLoRA on the four attention projections of every layer (query, key, value,
                   output dense; 4 L modules of the same shape H x H, so every rank costs
                   A row + B column + singular value = 2 H + 1 parameters whichever module keeps
                   it). Its final rank budget is k = floor(B / (2 H + 1)) ranks in all, the most
                   that fit in the budget B, so the final count k (2 H + 1) <= B. PEFT sets the
                   budget to target_r x modules; k is rarely a multiple of 4 L, so target_r =
                   k / (4 L) (a fraction) and the allocator's integer total is set to k.
                   init_r = max(1, ceil(1.5 k / (4 L))) (AdaLoRA's default ratio 12 / 8), tinit = 10%,
                   tfinal = 30% of the schedule, deltaT = 10, the rest PEFT's defaults
                   (orthogonal regularisation 0.5, beta1 = beta2 = 0.85). Its checkpoint is chosen
                   among the evaluations where its live ranks (non-zero singular values) fit the
                   budget, i.e. once pruning has reached it; `within_budget` says whether one did.

torch, transformers and peft are the optional extra `evidence` (structures.py imports this module only
where they are installed).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import ml_collections
import numpy as np

# Idle OpenMP threads sleep instead of spinning (peft_peer.py measured 4-9x slower steps on a shared
# CPU otherwise); must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import peft
import torch
import transformers
from transformers.modeling_outputs import SequenceClassifierOutput

from s3delta_jax import data as data_lib
from s3delta_jax.deltas import budget_params, get_delta_type
from s3delta_jax.models.backbone import Backbone
from s3delta_jax.train.loop import phase_steps

from structures_data import SplitData, full_test_data, paper_split_data, task_of
from structures_stats import PEFT_ADALORA, PEFT_LORA

PEERS = (PEFT_LORA, PEFT_ADALORA)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUERY_VALUE = r".*attention\.self\.(query|value)"
ATTENTION_PROJECTIONS = r".*attention\.(self\.(query|key|value)|output\.dense)"
ADALORA_TINIT, ADALORA_TFINAL, ADALORA_DELTA_T = 0.1, 0.3, 10
RESULTS = "results.json"


def adalora_ranks(budget: int, hidden_size: int, num_modules: int) -> dict[str, Any]:
    """AdaLoRA's rank settings for a budget of `budget` parameters on `num_modules` H x H modules
    (see the module docstring)."""
    per_rank = 2 * hidden_size + 1
    target_ranks = budget // per_rank
    if target_ranks < 1:
        raise ValueError(f"a budget of {budget} parameters is below one AdaLoRA rank ({per_rank})")
    init_r = max(1, math.ceil(1.5 * target_ranks / num_modules))
    return {"per_rank_params": per_rank, "target_ranks": target_ranks, "target_params": target_ranks * per_rank,
            "target_r": target_ranks / num_modules, "init_r": init_r, "num_modules": num_modules}


def train_peer(name: str, config: ml_collections.ConfigDict, backbone: Backbone, workdir: str) -> dict[str, Any]:
    """Trains peer `name` (one of PEERS) on `config`'s seed (and budget, for AdaLoRA); writes and returns
    results.json's dict: val / test / full_test metrics, best_step, trainable_params (excluding the head)."""
    started = time.monotonic()
    if backbone.family != "bert":
        raise ValueError(f"the PEFT peers need a BERT-family backbone, got {backbone.family!r}")
    torch.manual_seed(config.seed)
    splits, full_test = paper_split_data(config, backbone), full_test_data(config, backbone)
    task = task_of(config)
    head = backbone.task_head(task, config.eval.method, config.eval.max_decode_length)
    steps, full_steps = phase_steps(len(splits["train"].encoded), config.retrain)
    model, settings = build_peer(name, config, backbone, head.classifier.num_outputs, full_steps)

    def evaluate(split: SplitData) -> dict[str, float]:
        return _evaluate(model, head, task, split, config.retrain.eval_batch_size)

    best = _train(model, name, config, splits, steps, full_steps, settings.get("target_params"), evaluate)
    results = {
        "method": name,
        "seed": config.seed,
        "budget": config.search.budget if name == PEFT_ADALORA else None,
        "best_step": best["step"],
        "val": best["val"],
        "test": evaluate(splits["test"]),
        "full_test": None if full_test is None else evaluate(full_test),
        "trainable_params": best["params"],
        "initial_trainable_params": _AdapterCount(model).total,
        "head_params": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n),
        "within_budget": best["eligible"] if "target_params" in settings else None,
        **settings,
        "steps": steps,
        "schedule_steps": full_steps,
        "wall_seconds": {"total": time.monotonic() - started},
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RESULTS), "w") as f:
        json.dump(results, f, indent=1)
    return results


def build_peer(name: str, config: ml_collections.ConfigDict, backbone: Backbone, num_outputs: int,
               full_steps: int) -> tuple[Any, dict[str, Any]]:
    """(the PEFT model of peer `name` with a fresh head, its settings for results.json)."""
    model = Classifier(_encoder(backbone), num_outputs, backbone.config.hidden_dropout_prob, backbone.pooling).to(DEVICE)
    lora_alpha = get_delta_type("lora").defaults["alpha"]
    if name == PEFT_LORA:
        peft_config = peft.LoraConfig(r=1, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=QUERY_VALUE,
                                      modules_to_save=["classifier"])
        return peft.get_peft_model(model, peft_config), {}
    if name == PEFT_ADALORA:
        return _adalora(model, config, backbone, full_steps, lora_alpha)
    raise ValueError(f"unknown peer {name!r}: use one of {', '.join(PEERS)}")


def _train(model, name: str, config: ml_collections.ConfigDict, splits: dict[str, SplitData], steps: int,
           full_steps: int, budget_target: int | None, evaluate) -> dict[str, Any]:
    """The training loop (module docstring); leaves the model at its best evaluation and returns it:
    {"step", "val", "eligible" (within `budget_target`), "params" (live adapter parameters)}."""
    phase = config.retrain
    counter = _AdapterCount(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=phase.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(full_steps, 1)))
    batches = data_lib.TrainBatches(splits["train"].encoded, phase.batch_size, seed=config.seed,
                                    pad_multiple=config.data.pad_multiple, group_batches=phase.group_batches)
    # Evaluations within the budget first, then the higher (>=: the later) validation score.
    best = {"key": (False, -math.inf), "step": -1, "val": {}, "eligible": False, "params": None, "state": {}}
    for step in range(1, steps + 1):
        model.train()
        loss = model(**_tensors(next(batches))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, phase.clip_norm)
        optimizer.step()
        scheduler.step()
        if name == PEFT_ADALORA:
            model.base_model.update_and_allocate(step - 1)  # after the step, before zero_grad, from 0
        optimizer.zero_grad(set_to_none=True)
        if step % phase.eval_every == 0 or step == steps:
            val = evaluate(splits["validation"])
            live = counter.live()
            eligible = budget_target is None or live <= budget_target
            key = (eligible, next(iter(val.values())))
            if key >= best["key"]:
                best = {"key": key, "step": step, "val": val, "eligible": eligible, "params": live,
                        "state": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}
            print(f"{name} seed {config.seed} step {step}/{steps} loss {loss.item():.4f} val {val} "
                  f"live adapter params {live}", flush=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best["state"]:
                p.copy_(best["state"][n])
    return best


def _encoder(backbone: Backbone):
    """The `transformers` encoder of the backbone's architecture (no pooler), with its weights."""
    hf = backbone.config.to_hf_dict()
    hf_config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    if backbone.checkpoint_dir is not None:
        return transformers.AutoModel.from_pretrained(backbone.checkpoint_dir, config=hf_config,
                                                      add_pooling_layer=False)
    return transformers.AutoModel.from_config(hf_config, add_pooling_layer=False)


def _adalora(model, config: ml_collections.ConfigDict, backbone: Backbone, full_steps: int, lora_alpha: float):
    """AdaLoRA at the config's budget (see the module docstring): (the PEFT model, its settings)."""
    budget = budget_params(config.search.budget, backbone.num_params)
    ranks = adalora_ranks(budget, backbone.config.hidden_size, 4 * backbone.config.num_hidden_layers)
    schedule = {"tinit": int(ADALORA_TINIT * full_steps), "tfinal": int(ADALORA_TFINAL * full_steps),
                "deltaT": ADALORA_DELTA_T}
    peft_config = peft.AdaLoraConfig(
        init_r=ranks["init_r"], target_r=ranks["target_r"], lora_alpha=lora_alpha, lora_dropout=0.0,
        total_step=full_steps, target_modules=ATTENTION_PROJECTIONS, modules_to_save=["classifier"], **schedule)
    model = peft.get_peft_model(model, peft_config)
    allocator = model.base_model.rankallocator
    if len(allocator.name_set) != ranks["num_modules"]:
        raise ValueError(f"AdaLoRA adapted {len(allocator.name_set)} modules, expected {ranks['num_modules']}")
    allocator.target_bgt = ranks["target_ranks"]  # an integer total, where target_r x modules is fractional
    print(f"peft_adalora seed {config.seed}: budget {budget} params -> {ranks['target_ranks']} ranks of "
          f"{ranks['per_rank_params']} = {ranks['target_params']} trainable params at the end (init_r "
          f"{ranks['init_r']} on {ranks['num_modules']} modules)", flush=True)
    return model, {"budget_params": budget, "adalora": {**ranks, **schedule}, "target_params": ranks["target_params"]}


class _AdapterCount:
    """Adapter parameters (the head excluded): all trainable ones, and the live ones, where an AdaLoRA
    rank whose singular value is 0 (pruned) counts for nothing: a live rank costs in + out + 1."""

    def __init__(self, model):
        named = {n: p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n}
        self.total = sum(p.numel() for p in named.values())
        # (singular values E [r, 1], the parameters one rank costs: A's row [in] + B's column [out] + 1)
        self.ranks = [(e, named[n.replace("lora_E", "lora_A")].shape[1] + named[n.replace("lora_E", "lora_B")].shape[0] + 1)
                      for n, e in named.items() if "lora_E" in n]

    def live(self) -> int:
        if not self.ranks:
            return self.total
        return sum(int((e != 0).sum()) * per_rank for e, per_rank in self.ranks)


class Classifier(torch.nn.Module):
    """Encoder, pooling, dropout, Linear (models/bert/heads.py in torch): input_ids, attention_mask,
    token_type_ids long[B, L] -> logits f32[B, C] (a score f32[B, 1] for regression) and, given labels
    [B] and weights f32[B] (0 for padding rows), the mean loss over the real rows."""

    def __init__(self, encoder, num_outputs: int, dropout_rate: float, pooling: str):
        super().__init__()
        self.encoder, self.pooling, self.config = encoder, pooling, encoder.config
        self.dropout = torch.nn.Dropout(dropout_rate)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_outputs)
        _lecun_normal_(self.classifier)

    def forward(self, input_ids, attention_mask, token_type_ids, labels=None, weights=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        outputs = self.classifier(self.dropout(pooled).float())
        loss = None
        if labels is not None:
            if outputs.shape[-1] == 1:
                per_row = (outputs[:, 0] - labels) ** 2
            else:
                per_row = torch.nn.functional.cross_entropy(outputs, labels.long(), reduction="none")
            loss = (per_row * weights).sum() / weights.sum().clamp(min=1.0)
        # PEFT's AdaLoRA adds its orthogonal regularisation to `loss` of what the model returns.
        return SequenceClassifierOutput(loss=loss, logits=outputs)


def _lecun_normal_(linear) -> None:
    """Flax's nn.Dense initialisation: kernel ~ truncated normal (2 std) of variance 1 / fan_in, bias 0."""
    std = math.sqrt(1.0 / linear.in_features) / 0.87962566103423978  # the truncated normal's std at 1
    with torch.no_grad():
        torch.nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
        torch.nn.init.zeros_(linear.bias)


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A numpy batch (data.pipeline) as the Classifier's torch inputs."""
    out = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    if "labels" in batch:
        out.update(labels=torch.from_numpy(batch["labels"]), weights=torch.from_numpy(batch["weights"]))
    return {k: v.to(DEVICE) for k, v in out.items()}


def _evaluate(model, head, task: data_lib.Task, split: SplitData, batch_size: int) -> dict[str, float]:
    """Metrics of `split` with dropout off, scored as ours (head.predictions + data.compute_metrics)."""
    model.eval()
    predictions: list[str] = []
    with torch.no_grad():
        for batch in data_lib.eval_batches(split.encoded, batch_size):
            arrays = {k: v for k, v in batch.arrays.items() if k not in ("labels", "weights")}
            logits = model(**_tensors(arrays)).logits.cpu().numpy()[: batch.num_real]
            outputs = logits[:, 0] if head.regression else logits.argmax(-1)
            predictions += head.predictions(outputs)
    return data_lib.compute_metrics(task, predictions, split.examples)
