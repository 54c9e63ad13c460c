"""The cases step_cost.py measures, and what each one needs: a random T5, the search space, a
structure at the budget, and synthetic batches."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s3delta_jax.deltas import (
    Candidate,
    Position,
    Rule,
    budget_params,
    candidates_from_mask,
    discover_positions,
    expand,
)
from s3delta_jax.models import t5
from s3delta_jax.search import gates
from s3delta_jax.search.select import select_greedy
from s3delta_jax.search.step import DELTA_GRADIENTS
from s3delta_jax.train.setup import DTYPES, seq2seq_loss

# configs/base.py:smoke's tiny T5 (byte vocabulary), as overrides of t5-small.
TINY_SHAPE = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
              "vocab_size": 259}
# The reference resizes the t5-* vocabulary to 32100 rows.
T5_VOCAB = 32100
# The paper's budget, 1.389 per ten-thousand of the backbone; for the tiny model the smoke config's
# ratio (the paper's would be smaller than most single candidates).
PAPER_BUDGET = 1.389e-4
DEFAULT_BUDGET = {"tiny": 0.015}


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration.

    Attributes:
      model: 'tiny' (configs/base.py:smoke's T5) or a T5 preset name ('t5-small', 't5-base', 't5-large').
      batch_size: examples per batch (the search step takes one D_delta and one D_alpha batch of this size).
      source_length / target_length: encoder and decoder tokens per example.
      dtype: 'float32' or 'bfloat16' (backbone weights and activations).
      steps: timed steps per measured function, after `warmup` (>= 1) untimed ones.
      budget: a ratio (< 1) of the backbone's parameters or a count; None: the model's default.
      num_layers: encoder and decoder blocks each, overriding the model's (same widths); None: the model's.
      dropout_rate: 0.1, as in the reference (dropout is on in every training pass).
      space: the search space: a preset name ('s3pet_mix', the paper's S3PET-M; 's3pet_lora', S3PET-L) or
        rules as `deltas.expand` takes them (a tuple of passes, each a tuple of Rules).
      profile: also time the pieces of the steps (step_cost_pieces.py).
      peer: also time the PEFT peer (peft_peer.py).
      delta_gradient: 'resample' (reference) or 'reuse' for the second-order search steps (SearchSettings).
    """

    model: str
    batch_size: int
    source_length: int
    target_length: int
    dtype: str = "float32"
    steps: int = 5
    warmup: int = 2
    budget: float | None = None
    num_layers: int | None = None
    dropout_rate: float = 0.1
    space: str | tuple[tuple[Rule, ...], ...] = "s3pet_mix"
    profile: bool = False
    peer: bool = True
    delta_gradient: str = "resample"

    def __post_init__(self):
        if self.model != "tiny":
            t5.get_config(self.model)  # raises T5ConfigError naming the presets
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("batch_size", "source_length", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.target_length < 2:
            raise ValueError(f"target_length must be at least 2 (tokens, then EOS), got {self.target_length}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be at least 1 (compiling is timed apart; the first call warms up), "
                             f"got {self.warmup}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.delta_gradient not in DELTA_GRADIENTS:
            raise ValueError(f"delta_gradient {self.delta_gradient!r} is not one of {', '.join(DELTA_GRADIENTS)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def space_name(self) -> str:
        """The preset's name, or the custom rules written out."""
        if isinstance(self.space, str):
            return self.space
        return " / ".join(", ".join(str(rule) for rule in rules) for rules in self.space)

    @property
    def label(self) -> str:
        layers = "" if self.num_layers is None else f" ({self.num_layers}+{self.num_layers} layers)"
        reuse = ", delta gradient reused" if self.delta_gradient == "reuse" else ""
        return (f"{self.model}{layers} {self.dtype} batch {self.batch_size} src {self.source_length} "
                f"tgt {self.target_length}{reuse}")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A case made concrete: model, frozen params, the search space, a structure and two batches.

    sizes: f32[N] candidate sizes; budget: B in parameters; structure: the candidates a greedy
    selection keeps at the budget; batch_delta / batch_alpha: int32 input_ids, attention_mask
    [b, src] and labels, decoder_attention_mask [b, tgt].
    """

    case: Case
    config: t5.T5Config
    model: t5.T5ForConditionalGeneration
    params: Any
    positions: list[Position]
    candidates: list[Candidate]
    sizes: np.ndarray
    budget: int
    structure: list[Candidate]
    batch_delta: dict[str, jax.Array]
    batch_alpha: dict[str, jax.Array]

    @property
    def loss_fn(self):
        """`loss(apply_fn, params, batch, dropout_key)`: the programs' seq2seq loss, dropout on."""
        return seq2seq_loss(self.config)

    @property
    def backbone_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.params))


def model_config(case: Case) -> t5.T5Config:
    """The case's T5 architecture and dtype."""
    dtype = DTYPES[case.dtype]
    overrides = dict(TINY_SHAPE) if case.model == "tiny" else {"vocab_size": T5_VOCAB}
    if case.num_layers is not None:
        overrides.update(num_layers=case.num_layers, num_decoder_layers=case.num_layers)
    name = "t5-small" if case.model == "tiny" else case.model
    return t5.get_config(name, **overrides, dropout_rate=case.dropout_rate, dtype=dtype, param_dtype=dtype)


def synthetic_batch(rng: np.random.Generator, case: Case, vocab_size: int) -> dict[str, np.ndarray]:
    """Random token ids ending with EOS (1), full masks: int32 [b, src] and [b, tgt] arrays."""
    input_ids = rng.integers(3, vocab_size, (case.batch_size, case.source_length), dtype=np.int32)
    labels = rng.integers(3, vocab_size, (case.batch_size, case.target_length), dtype=np.int32)
    input_ids[:, -1] = labels[:, -1] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "labels": labels,
        "decoder_attention_mask": np.ones_like(labels),
    }


def build(case: Case, seed: int = 0) -> Setup:
    """Random backbone params, the case's search space, the budget, a greedy structure at the budget
    (from random p, so a spread of module types and depths) and one D_delta + one D_alpha batch."""
    config = model_config(case)
    model = t5.T5ForConditionalGeneration(config)
    params = t5.init_params(config, jax.random.PRNGKey(seed))
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    positions = discover_positions(model, ids, ids, ids, ids, deterministic=True)
    expansion = expand(case.space, positions)
    ratio = case.budget if case.budget is not None else DEFAULT_BUDGET.get(case.model, PAPER_BUDGET)
    budget = budget_params(ratio, sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
    gates.validate_budget(expansion.sizes, budget)
    rng = np.random.default_rng(seed)
    keep = select_greedy(rng.random(len(expansion.candidates)), expansion.sizes, budget)
    batch_delta, batch_alpha = ({k: jnp.asarray(v) for k, v in synthetic_batch(rng, case, config.vocab_size).items()}
                                for _ in range(2))
    return Setup(case, config, model, params, positions, expansion.candidates,
                 np.asarray(expansion.sizes, np.float32), budget, candidates_from_mask(expansion.candidates, keep),
                 batch_delta, batch_alpha)
