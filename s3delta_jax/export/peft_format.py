"""`export_peft`: the re-trained deltas as a PEFT LoRA adapter, for `peft.PeftModel.from_pretrained(base, DIR)`.

The directory gets adapter_config.json and adapter_model.safetensors (keys
`base_model.model.<Hugging Face module name>.lora_A.weight`, ...). The base model is the backbone's
checkpoint directory (`base_model_name_or_path`) loaded with `transformers.AutoModelForSeq2SeqLM`
(T5) or `transformers.AutoModel` (BERT / RoBERTa: a `BertModel`, so the names are `encoder.layer.0...`,
without a `bert.` prefix). What goes where:

* Every linear with LoRA and/or BitFit is one LoRA target (`target_modules`, full module names, each
  with its own `rank_pattern` and `alpha_pattern` entry). PEFT adds lora_B(lora_A(x)) * lora_alpha / r
  to the linear's output y; we add x A B * alpha / r + b. So lora_A.weight = A^T f32[r, in],
  lora_B.weight = B^T f32[out, r], with our r and alpha. Several LoRAs at one linear become one of
  rank sum r_i, alpha = that rank (scaling 1), B_i scaled by alpha_i / r_i. A BitFit b becomes
  lora_B.bias = b / scaling (`lora_bias=True`, which gives every target a bias: zero where there is
  no BitFit), and a BitFit alone a rank-1 LoRA with zero factors: exact also on T5's bias-free linears.
* LNFit and BitFit on a norm are folded into its scale and bias, and the norm goes whole into
  `modules_to_save`.
* Adapters (non-linear), BitFit on a norm without a bias (T5) and deltas on T5's tied output
  projection are refused, or left out with `allow_partial`.

An encoder's classifier head goes beside the adapter (head.py); `torch_classifier(DIR)` loads the
base model, the adapter and the head. PEFT loads an adapter whose keys do not match its model with
only a warning (lora_B then stays zero), so before anything is written PEFT itself builds this LoRA
config on the base model's architecture (meta device, no weights): its state dict must have exactly
our keys and shapes, and each target our scaling.

`from_peft(DIR, backbone)` reads a PEFT LoRA adapter back onto a backbone's positions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from s3delta_jax.deltas.inject import candidate_params
from s3delta_jax.deltas.merge import merge_deltas
from s3delta_jax.deltas.positions import CALL, Position, hf_module_name
from s3delta_jax.deltas.spaces import Candidate, make_candidate
from s3delta_jax.deltas.structure import Structure, structure_from_candidates
from s3delta_jax.export.head import save_head
from s3delta_jax.export.hf_checkpoint import check_family, meta_torch_model
from s3delta_jax.export.output_dir import ExportReport, check_output_dir, staged_output
from s3delta_jax.export.refusal import ExportError, settle
from s3delta_jax.export.workdir import Retrained
from s3delta_jax.models.backbone import Backbone

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias)$")


class AdapterMismatch(RuntimeError):
    """The adapter's keys, shapes or scalings differ from what PEFT builds for its config (an exporter bug)."""


def is_lora_target(candidate: Candidate) -> bool:
    """Whether the delta goes into a PEFT LoRA target: LoRA or BitFit on a linear's own call."""
    position = candidate.position
    return candidate.delta_type in ("lora", "bitfit") and position.kind == "linear" and position.method == CALL


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    """One linear's LoRA in PEFT's terms: r, alpha, lora_A f32[r, in], lora_B f32[out, r], lora_B's bias f32[out] or None."""

    module: str
    r: int
    alpha: float
    lora_a: np.ndarray
    lora_b: np.ndarray
    bias: np.ndarray | None

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def lora_target(position: Position, candidates: Sequence[Candidate], delta: Mapping[str, Any]) -> LoraTarget:
    """The LoRA target of the LoRAs and BitFits at one linear (see the module docstring)."""
    loras = [c for c in candidates if c.delta_type == "lora"]
    weights = {c.name: {k: np.asarray(v, np.float32) for k, v in candidate_params(delta, c).items()} for c in candidates}
    if len(loras) == 1:
        (lora,) = loras
        r, alpha = lora.kwargs["r"], float(lora.kwargs["alpha"])
        lora_a, lora_b = weights[lora.name]["A"].T, weights[lora.name]["B"].T
    elif loras:
        r = sum(c.kwargs["r"] for c in loras)
        alpha = float(r)
        lora_a = np.concatenate([weights[c.name]["A"].T for c in loras], axis=0)
        lora_b = np.concatenate([weights[c.name]["B"].T * (c.kwargs["alpha"] / c.kwargs["r"]) for c in loras], axis=1)
    else:
        r, alpha = 1, 1.0
        lora_a = np.zeros((1, position.in_features), np.float32)
        lora_b = np.zeros((position.out_features, 1), np.float32)
    biases = [weights[c.name]["b"] for c in candidates if c.delta_type == "bitfit"]
    bias = sum(biases) / (alpha / r) if biases else None
    return LoraTarget(hf_module_name(position.name), r, alpha, np.ascontiguousarray(lora_a),
                      np.ascontiguousarray(lora_b), bias)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter: its config (`peft.LoraConfig` keyword arguments), its tensors by file key,
    each target's scaling by module name, and the deltas it leaves out."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    scalings: dict[str, float]
    left_out: list[Candidate]


def build_adapter(retrained: Retrained, allow_partial: bool = False) -> Adapter:
    """The adapter of a re-trained structure; ExportError when a delta cannot go in (unless `allow_partial`)."""
    backbone, candidates = retrained.backbone, sorted(retrained.candidates, key=lambda c: c.index)
    if backbone.checkpoint_dir is None:
        raise ExportError(f"the backbone {backbone.name!r} has random weights, which a PEFT adapter cannot name as "
                          "its base model: export with --to merged")
    at_linears: dict[str, list[Candidate]] = {}
    for candidate in filter(is_lora_target, candidates):
        at_linears.setdefault(candidate.position.name, []).append(candidate)
    at_norms = [c for c in candidates if c.position.kind == "norm" and c.delta_type in ("lnfit", "bitfit")]
    folded, unfolded = merge_deltas(retrained.params, at_norms, retrained.delta)
    unheld = [c for c in candidates if not is_lora_target(c) and (c not in at_norms or c in unfolded)]
    left_out = settle(unheld, len(candidates), "a PEFT adapter", allow_partial)
    if not at_linears:
        raise ExportError("a PEFT LoRA adapter needs LoRA or BitFit on at least one linear, and this structure has "
                          "none: export with --to merged")
    targets = [lora_target(here[0].position, here, retrained.delta) for here in at_linears.values()]
    lora_bias = any(t.bias is not None for t in targets)
    tensors: dict[str, np.ndarray] = {}
    for t in targets:
        tensors[f"{KEY_PREFIX}{t.module}.lora_A.weight"] = t.lora_a
        tensors[f"{KEY_PREFIX}{t.module}.lora_B.weight"] = t.lora_b
        if lora_bias:
            bias = np.zeros(t.lora_b.shape[0], np.float32) if t.bias is None else t.bias
            tensors[f"{KEY_PREFIX}{t.module}.lora_B.bias"] = np.asarray(bias, np.float32)
    saved = sorted({hf_module_name(c.position.name) for c in at_norms if c not in unfolded})
    hf_tensors = backbone.hf_state_dict(folded) if saved else {}
    for name in saved:
        tensors.update({KEY_PREFIX + key: np.ascontiguousarray(value) for key, value in hf_tensors.items()
                        if key.startswith(f"{name}.")})
    config = dict(
        r=targets[0].r, lora_alpha=targets[0].alpha, target_modules=[t.module for t in targets],
        rank_pattern={t.module: t.r for t in targets}, alpha_pattern={t.module: t.alpha for t in targets},
        modules_to_save=saved or None, lora_dropout=0.0, bias="none", lora_bias=lora_bias,
        base_model_name_or_path=os.path.abspath(backbone.checkpoint_dir),
    )
    return Adapter(config, tensors, {t.module: t.scaling for t in targets}, left_out)


def check_with_peft(backbone: Backbone, adapter: Adapter) -> None:
    """Raises AdapterMismatch unless PEFT, given the adapter's config on the base model's architecture,
    expects exactly its keys and shapes and gives each target its scaling."""
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(meta_torch_model(backbone), peft.LoraConfig(**copy.deepcopy(adapter.config)))
        expected = {key: tuple(value.shape) for key, value in peft.get_peft_model_state_dict(model).items()}
    actual = {key: tuple(value.shape) for key, value in adapter.tensors.items()}
    if actual != expected:
        missing = sorted(set(expected) - set(actual))
        unexpected = sorted(set(actual) - set(expected))
        reshaped = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
        raise AdapterMismatch(f"the adapter does not fit PEFT's {type(model.base_model.model).__name__}: missing "
                              f"{missing[:4]}, unexpected {unexpected[:4]}, other shapes {reshaped[:4]}")
    scalings = {name[len(KEY_PREFIX):]: module.scaling["default"] for name, module in model.named_modules()
                if isinstance(module, peft.tuners.lora.LoraLayer)}
    wrong = sorted(name for name, scaling in adapter.scalings.items() if not math.isclose(scalings.get(name, 0.0), scaling))
    if wrong or scalings.keys() != adapter.scalings.keys():
        raise AdapterMismatch(f"PEFT scales the LoRA of {wrong[:4] or sorted(scalings)[:4]} otherwise than the export")


def export_peft(retrained: Retrained, out: str, allow_partial: bool = False) -> ExportReport:
    """Writes the PEFT adapter (and an encoder's head) into `out` (absent or empty); ExportError when a
    delta cannot go in (unless `allow_partial`) or `out` holds files, and then nothing is written."""
    from safetensors.numpy import save_file

    check_family(retrained.backbone)
    check_output_dir(out)
    adapter = build_adapter(retrained, allow_partial)
    check_with_peft(retrained.backbone, adapter)
    with staged_output(out) as staging:
        with open(os.path.join(staging, ADAPTER_CONFIG), "w") as f:
            json.dump({"peft_type": "LORA", "task_type": None, **adapter.config}, f, indent=2)
        save_file(adapter.tensors, os.path.join(staging, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, *save_head(retrained, staging)]
    return ExportReport(out, files, adapter.left_out)


# --------------------------------------------------------------------------------------------
# Reading an adapter back


@dataclasses.dataclass(frozen=True)
class PeftImport:
    """A PEFT LoRA adapter on a backbone: `candidates` (indices 0..k-1 in the backbone's position order,
    LoRA before BitFit at one linear), their weights `delta` (`deltas.init_delta` layout), and the
    same candidates as a Structure (for `save_structure` and re-training)."""

    candidates: list[Candidate]
    delta: dict[str, Any]
    structure: Structure


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name
    at a '.' boundary (as a regular expression), else the default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _read_adapter(directory: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """(adapter_config.json, {module name: {'lora_A.weight': ..., ...}}); ExportError for what we cannot read."""
    from safetensors.numpy import load_file

    path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise ExportError(f"{directory} has no {ADAPTER_CONFIG}: pass a directory that PEFT's save_pretrained wrote")
    with open(path) as f:
        config = json.load(f)
    refused = {"peft_type": config.get("peft_type") != "LORA", "use_dora": bool(config.get("use_dora")),
               "bias": config.get("bias", "none") != "none", "modules_to_save": bool(config.get("modules_to_save"))}
    if any(refused.values()):
        fields = ", ".join(f"{name}={config.get(name)!r}" for name, bad in refused.items() if bad)
        raise ExportError(f"{path}: {fields} is not a plain LoRA adapter; from_peft reads LoRA (with lora_bias) only")
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, array in load_file(os.path.join(directory, ADAPTER_WEIGHTS)).items():
        match = _LORA_KEY.match(key.removeprefix(KEY_PREFIX))
        if not key.startswith(KEY_PREFIX) or match is None:
            raise ExportError(f"{directory}: {key} is not a LoRA weight of a linear; from_peft reads "
                              f"{KEY_PREFIX}<module>.lora_A.weight / lora_B.weight / lora_B.bias only")
        modules.setdefault(match["module"], {})[match["part"]] = array
    return config, modules


def from_peft(directory: str, backbone: Backbone) -> PeftImport:
    """A PEFT LoRA adapter as candidates and weights on `backbone` (for transfer and warm starts).

    Each adapted linear gets a LoRA with PEFT's r and alpha (`use_rslora`'s alpha / sqrt(r) scaling
    becomes alpha' = scaling r); a `lora_B.bias` becomes a BitFit b = bias * scaling. lora_dropout is
    dropped: our LoRA has none. ExportError for other PEFT types, DoRA, trained base biases or
    modules_to_save, and for a module that is not a linear of the backbone.
    """
    config, modules = _read_adapter(directory)
    positions = [p for p in backbone.positions() if p.kind == "linear"]
    by_name = {hf_module_name(p.name): p for p in positions}
    unknown = sorted(set(modules) - set(by_name))
    if unknown:
        raise ExportError(f"{directory}: {unknown[:4]} are not linear modules of {backbone.name!r}: read the adapter "
                          "onto the backbone it was trained on")
    candidates: list[Candidate] = []
    weights: dict[str, dict[str, jnp.ndarray]] = {}
    for position in positions:
        parts = modules.get(hf_module_name(position.name))
        if parts is None:
            continue
        r = _pattern_value(config.get("rank_pattern") or {}, hf_module_name(position.name), config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, hf_module_name(position.name), config["lora_alpha"])
        scaling = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        lora_a, lora_b = parts.get("lora_A.weight"), parts.get("lora_B.weight")
        shapes = ((r, position.in_features), (position.out_features, r))
        if lora_a is None or lora_b is None or (lora_a.shape, lora_b.shape) != shapes:
            raise ExportError(f"{directory}: {hf_module_name(position.name)} needs lora_A [r, in] and lora_B [out, r] "
                              f"of shapes {shapes} (r={r} by the config)")
        lora = make_candidate(len(candidates), position, "lora", {"r": r, "alpha": scaling * r})
        candidates.append(lora)
        weights[lora.name] = {"A": jnp.asarray(lora_a.T), "B": jnp.asarray(lora_b.T)}
        if "lora_B.bias" in parts:
            bitfit = make_candidate(len(candidates), position, "bitfit", {})
            candidates.append(bitfit)
            weights[bitfit.name] = {"b": jnp.asarray(parts["lora_B.bias"] * scaling)}
    delta: dict[str, Any] = {}
    for candidate in candidates:
        node = delta
        for part in candidate.position.tree_path:
            node = node.setdefault(part, {})
        node[candidate.key] = weights[candidate.name]
    structure = structure_from_candidates(candidates, backbone=backbone.name, backbone_params=backbone.num_params)
    return PeftImport(candidates, delta, structure)
