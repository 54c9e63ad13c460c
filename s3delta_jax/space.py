"""Inspect a search space (or a baseline structure) on a T5 backbone, shapes only, no weights.

    python -m s3delta_jax.space --model t5-large --space s3pet_mix --budget 1.389e-4 --json

prints one JSON object: candidates 916, delta_params 1881088, backbone_params 737639424,
budget_params 102458, and the count and parameters per delta type. Without --json it prints a
table. --model is a preset name (t5-large, google/flan-t5-base, ...) or a local Hugging Face
model directory (only its config.json is read). --baseline NAME shows a reference baseline
structure (bitfit, lnfit, adapter, adapter_lr, lora_qv_r1, lora_qv_r8) instead of a space.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from s3delta_jax.deltas.baselines import BASELINES
from s3delta_jax.deltas.budget import BudgetError, backbone_param_count, budget_params
from s3delta_jax.deltas.positions import Position, discover_positions
from s3delta_jax.deltas.spaces import SPACES, SpaceError, expand, type_breakdown
from s3delta_jax.models import t5

# The t5-* / flan-t5 SentencePiece vocabulary has 32100 ids; configs pad it to 32128. The
# reference resizes the embedding to 32100 before counting (reference section 1.1).
T5_PADDED_VOCAB, T5_TOKENIZER_VOCAB = 32128, 32100


class ModelSpecError(ValueError):
    """--model is neither a known preset nor a directory with a config.json."""


def load_config(model: str) -> t5.T5Config:
    """A T5Config from a preset name or a local Hugging Face model directory (config.json)."""
    path = Path(model)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelSpecError(f"{model}: the directory has no config.json")
        try:
            return t5.T5Config.from_hf_dict(json.loads(config_file.read_text()))
        except (json.JSONDecodeError, KeyError) as error:
            raise ModelSpecError(f"{config_file}: not a readable T5 config ({error!r})") from None
    try:
        return t5.get_config(model)
    except t5.T5ConfigError:
        raise ModelSpecError(
            f"--model {model!r} is neither a local directory with config.json nor a preset ({', '.join(t5.PRESETS)})"
        ) from None


def resized_vocab(config: t5.T5Config, vocab_size: int | None) -> int:
    """The vocabulary the backbone is counted with: ``vocab_size``, else 32100 for T5's padded 32128."""
    if vocab_size is not None:
        return vocab_size
    return T5_TOKENIZER_VOCAB if config.vocab_size == T5_PADDED_VOCAB else config.vocab_size


def t5_positions(config: t5.T5Config) -> list[Position]:
    """The positions of a T5 model, traced with shapes only."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return discover_positions(t5.T5ForConditionalGeneration(config), ids, ids, ids, ids)


def describe(model: str, space: str | None, baseline: str | None, budget: float | None, vocab_size: int | None) -> dict[str, Any]:
    """The summary that the CLI prints, as a dict."""
    config = load_config(model)
    config = dataclasses.replace(config, vocab_size=resized_vocab(config, vocab_size))
    positions = t5_positions(config)
    if baseline is not None:
        candidates, rules = BASELINES[baseline](positions), []
    else:
        expansion = expand(space, positions)
        candidates = expansion.candidates
        rules = [{"pass": m.pass_index, "rule": str(m.rule), "matches": m.count} for m in expansion.matches_per_rule]
    backbone = backbone_param_count(config, vocab_size=config.vocab_size)
    delta = sum(c.size for c in candidates)
    return {
        "model": model,
        "space": space,
        "baseline": baseline,
        "vocab_size": config.vocab_size,
        "positions": len(positions),
        "candidates": len(candidates),
        "delta_params": delta,
        "backbone_params": backbone,
        "delta_ratio": delta / backbone,
        "budget": budget,
        "budget_params": None if budget is None else budget_params(budget, backbone),
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
    parser.add_argument("--model", default="t5-large", help="T5 preset name or local Hugging Face model directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--space", choices=sorted(SPACES), default="s3pet_mix", help="search space preset")
    group.add_argument("--baseline", choices=sorted(BASELINES), help="a reference baseline structure instead of a space")
    parser.add_argument("--budget", type=float, help="ratio of the backbone (< 1) or parameter count (>= 1)")
    parser.add_argument("--vocab-size", type=int, help="count the backbone with this vocabulary (default: 32100 for T5's 32128)")
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
