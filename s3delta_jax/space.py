"""Inspect a search space (or a baseline structure) on any backbone, shapes only, no weights.

    python -m s3delta_jax.space --model t5-large --space s3pet_mix --budget 1.389e-4 --json

prints one JSON object: candidates 916, delta_params 1881088, backbone_params 737639424,
budget_params 102458, and the count and parameters per delta type. Without --json it prints a
table. --model is a preset name (t5-large, google/flan-t5-base, minilm-l6, roberta-base, ...) or a
local Hugging Face model directory (only its config.json is read). --space and --baseline name the
family's presets (T5: s3pet_mix, s3pet_lora, mix_all_linear; baselines bitfit, lnfit, adapter,
adapter_lr, lora_qv_r1, lora_qv_r8; BERT: s3pet_mix, s3pet_lora; bitfit, lnfit, lora_qv_r1, adapter_lr, linear_probe).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from s3delta_jax.deltas.budget import BudgetError, budget_params
from s3delta_jax.deltas.spaces import SpaceError, expand, type_breakdown
from s3delta_jax.errors import UserError
from s3delta_jax.models.checkpoint_files import CheckpointError
from s3delta_jax.models.registry import FamilyError, load_backbone

# The t5-* / flan-t5 SentencePiece vocabulary has 32100 ids; configs pad it to 32128. The
# reference resizes the embedding to 32100 before counting (reference section 1.1).
T5_PADDED_VOCAB, T5_TOKENIZER_VOCAB = 32128, 32100


class ModelSpecError(UserError, ValueError):
    """--model is neither a known preset nor a directory with a config.json."""


def model_config(model: str, vocab_size: int | None) -> ml_collections.ConfigDict:
    """The `model` section of a run's config for `model` (shapes only: no weights or tokenizer are read)."""
    return ml_collections.ConfigDict(dict(
        name=model, family="", random_init=not Path(model).is_dir(), config_overrides={}, tokenizer="",
        vocab_size=vocab_size or 0, dtype="float32", dropout_rate=0.0, pooling="mean"))


def load_shapes(model: str, vocab_size: int | None):
    """The backbone of a preset or a local directory (only its config.json is read); a T5 is counted
    with T5's 32100-id vocabulary unless `vocab_size` says otherwise."""
    try:
        backbone = load_backbone(model_config(model, vocab_size))
    except (FamilyError, CheckpointError) as error:
        raise ModelSpecError(f"--model {model!r}: {error}") from None
    if backbone.family == "t5" and vocab_size is None and backbone.config.vocab_size == T5_PADDED_VOCAB:
        backbone = load_backbone(model_config(model, T5_TOKENIZER_VOCAB))
    return backbone


def describe(model: str, space: str | None, baseline: str | None, budget: float | None, vocab_size: int | None) -> dict[str, Any]:
    """The summary that the CLI prints, as a dict."""
    backbone = load_shapes(model, vocab_size)
    positions = backbone.positions()
    expansion = expand(backbone.baseline(baseline) if baseline is not None else backbone.space(space), positions)
    candidates = expansion.candidates
    rules = [] if baseline is not None else [
        {"pass": m.pass_index, "rule": str(m.rule), "matches": m.count} for m in expansion.matches_per_rule]
    size = backbone.num_params
    delta = sum(c.size for c in candidates)
    return {
        "model": model,
        "family": backbone.family,
        "space": space,
        "baseline": baseline,
        "vocab_size": backbone.config.vocab_size,
        "positions": len(positions),
        "candidates": len(candidates),
        "delta_params": delta,
        "backbone_params": size,
        "delta_ratio": delta / size,
        "budget": budget,
        "budget_params": None if budget is None else budget_params(budget, size),
        "by_type": type_breakdown(candidates),
        "rules": rules,
    }


def format_table(summary: dict[str, Any]) -> str:
    """A readable table of a summary."""
    what = f"baseline {summary['baseline']}" if summary["baseline"] else f"space {summary['space']}"
    lines = [
        f"{what} on {summary['model']} (vocab {summary['vocab_size']}, {summary['positions']} positions)",
        f"{'delta type':<20}{'count':>8}{'params':>14}",
    ]
    for name, entry in summary["by_type"].items():
        lines.append(f"{name:<20}{entry['count']:>8}{entry['params']:>14,}")
    lines.append(f"{'total':<20}{summary['candidates']:>8}{summary['delta_params']:>14,}")
    lines.append(f"backbone parameters {summary['backbone_params']:,}; deltas are {summary['delta_ratio'] * 1e4:.2f} per ten-thousand")
    if summary["budget"] is not None:
        lines.append(f"budget {summary['budget']} -> {summary['budget_params']:,} parameters")
    for rule in summary["rules"]:
        lines.append(f"pass {rule['pass']}: {rule['rule']} matched {rule['matches']} positions")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3delta_jax.space", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="t5-large",
                        help="a preset (t5-large, minilm-l6, roberta-base, ...) or a local Hugging Face model directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--space", default="s3pet_mix", help="a search space preset of the model's family")
    group.add_argument("--baseline", help="a manual baseline structure of the model's family instead of a space")
    parser.add_argument("--budget", type=float, help="ratio of the backbone (< 1) or parameter count (>= 1)")
    parser.add_argument("--vocab-size", type=int, help="T5: count the backbone with this vocabulary (default: 32100 for T5's 32128)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space = None if args.baseline else args.space
        summary = describe(args.model, space, args.baseline, args.budget, args.vocab_size)
    except (ModelSpecError, SpaceError, BudgetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
