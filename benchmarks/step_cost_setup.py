"""The cases step_cost.py measures, and what each one needs: a random-weight `T5Backbone`, its task
head's loss, the search space, a structure at the budget, and synthetic batches."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s3delta_jax import data
from s3delta_jax.deltas import Candidate, Position, Rule, budget_params, candidates_from_mask, expand
from s3delta_jax.deltas.scan import ScannedLayers, stack_layers
from s3delta_jax.models import t5
from s3delta_jax.models.dtypes import parse_dtype
from s3delta_jax.models.remat import REMAT_POLICIES
from s3delta_jax.models.t5.backbone import Seq2SeqHead, T5Backbone
from s3delta_jax.search import gates
from s3delta_jax.search.select import select_greedy
from s3delta_jax.search.step import SearchSettings

# configs/base.py:smoke's tiny T5 (byte vocabulary), as overrides of t5-small.
TINY_SHAPE = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
              "vocab_size": 259}
# The reference resizes the t5-* vocabulary to 32100 rows.
T5_VOCAB = 32100
# The paper's budget, 1.389 per ten-thousand of the backbone; for the tiny model the smoke config's
# ratio (the paper's would be smaller than most single candidates).
PAPER_BUDGET = 1.389e-4
DEFAULT_BUDGET = {"tiny": 0.015}
# The task whose head gives the loss (the paper's MRPC); the loss reads only the batch, not the task.
TASK = "mrpc"
# The search steps that can be measured, by name: an estimator, '+shared' for hessian_dropout='shared',
# '+reuse' for delta_gradient='reuse'.
# Listed (and measured) smallest expected memory first, so that on a GPU the process's running peak
# after each step is that step's own peak.
SEARCHES: dict[str, SearchSettings] = {
    "first_order": SearchSettings(estimator="first_order"),
    "second_order_fd+reuse": SearchSettings(estimator="second_order_fd", delta_gradient="reuse"),
    "second_order_fd": SearchSettings(estimator="second_order_fd"),
    "second_order_exact+reuse": SearchSettings(estimator="second_order_exact", delta_gradient="reuse"),
    "second_order_exact": SearchSettings(estimator="second_order_exact"),
    "second_order_exact+shared+reuse": SearchSettings(estimator="second_order_exact", hessian_dropout="shared",
                                                      delta_gradient="reuse"),
    "second_order_exact+shared": SearchSettings(estimator="second_order_exact", hessian_dropout="shared"),
}
ESTIMATORS = ("first_order", "second_order_fd", "second_order_exact")


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
      space: the search space: a preset name of `T5Backbone.space` ('s3pet_mix', the paper's S3PET-M;
        's3pet_lora', S3PET-L) or rules as `deltas.expand` takes them (a tuple of passes of Rules).
      estimators: the search steps to measure, names of SEARCHES.
      scan_layers: the search steps run the T5 with its blocks under nn.scan (params stacked), so
        they compile one block body per stack; re-training steps and the profile run it unscanned.
      remat: the search steps' block rematerialisation (`T5Config.remat`: 'none', 'full', 'dots').
      profile: also time the pieces of the steps (step_cost_pieces.py).
      peer: also time the PEFT peer (peft_peer.py).
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
    estimators: tuple[str, ...] = ESTIMATORS
    scan_layers: bool = False
    remat: str = "none"
    profile: bool = False
    peer: bool = True

    def __post_init__(self):
        if self.model != "tiny":
            t5.get_config(self.model)  # raises T5ConfigError naming the presets
        parse_dtype(self.dtype)  # raises DtypeError (a ValueError) naming the dtypes
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
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r}: use one of {', '.join(REMAT_POLICIES)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        unknown = [name for name in self.estimators if name not in SEARCHES]
        if unknown or not self.estimators:
            raise ValueError(f"estimators {list(self.estimators)!r}: use one or more of {', '.join(SEARCHES)}")

    @property
    def space_name(self) -> str:
        """The preset's name, or the custom rules written out."""
        if isinstance(self.space, str):
            return self.space
        return " / ".join(", ".join(str(rule) for rule in rules) for rules in self.space)

    @property
    def budget_ratio_or_count(self) -> float:
        """The budget as given, or the model's default (the paper's ratio; the smoke config's for tiny)."""
        return self.budget if self.budget is not None else DEFAULT_BUDGET.get(self.model, PAPER_BUDGET)

    @property
    def searches(self) -> list[str]:
        """The case's search steps in measuring order (SEARCHES' order)."""
        return [name for name in SEARCHES if name in self.estimators]

    @property
    def label(self) -> str:
        layers = "" if self.num_layers is None else f" ({self.num_layers}+{self.num_layers} layers)"
        layers += ", search scanned" if self.scan_layers else ""
        layers += f", search remat {self.remat}" if self.remat != "none" else ""
        return (f"{self.model}{layers} {self.dtype} batch {self.batch_size} src {self.source_length} "
                f"tgt {self.target_length} dropout {self.dropout_rate:g}")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A case made concrete: backbone, its task head, frozen params, the search space, a structure
    and two batches.

    params: the backbone's weights, or their `jax.ShapeDtypeStruct`s when the steps are only compiled;
    sizes: f32[N] candidate sizes; budget: B in parameters; structure: the candidates a greedy
    selection keeps at the budget; batch_delta / batch_alpha: int32 input_ids, attention_mask
    [b, src] and labels, decoder_attention_mask [b, tgt].
    """

    case: Case
    backbone: T5Backbone
    head: Seq2SeqHead
    params: Any
    positions: list[Position]
    candidates: list[Candidate]
    sizes: np.ndarray
    budget: int
    structure: list[Candidate]
    batch_delta: dict[str, jax.Array]
    batch_alpha: dict[str, jax.Array]
    search_apply: Any
    search_params: Any
    scans: tuple[ScannedLayers, ...]

    @property
    def full_depth_structure(self) -> list[Candidate]:
        """The smallest candidate at the first position the forward pass reaches (the first encoder
        block's first norm in T5's spaces): re-training it runs the backward through the whole model,
        as every search pass does, whereas `structure`'s backward stops at its lowest module."""
        for position in self.positions:
            here = [c for c in self.candidates if c.position == position]
            if here:
                return [min(here, key=lambda c: c.size)]
        raise ValueError("the search space has no candidate")

    @property
    def model_apply(self):
        return self.backbone.module.apply

    @property
    def loss_fn(self):
        """`loss(apply_fn, params, batch, dropout_key)`: the programs' seq2seq loss (`Seq2SeqHead.loss`), dropout on."""
        return self.head.loss


def t5_backbone(case: Case) -> T5Backbone:
    """The case's T5 architecture and dtype with random weights. No text is encoded or decoded (the
    batches are synthetic token ids), so the tokenizer is the byte one, which needs no files."""
    dtype = parse_dtype(case.dtype)
    overrides = dict(TINY_SHAPE) if case.model == "tiny" else {"vocab_size": T5_VOCAB}
    if case.num_layers is not None:
        overrides.update(num_layers=case.num_layers, num_decoder_layers=case.num_layers)
    name = "t5-small" if case.model == "tiny" else case.model
    config = t5.get_config(name, **overrides, dropout_rate=case.dropout_rate, dtype=dtype, param_dtype=dtype)
    return T5Backbone(case.model, config, "bytes")


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


def build(case: Case, seed: int = 0, abstract_params: bool = False) -> Setup:
    """The backbone (random params, or only their shapes with `abstract_params`), the case's search
    space, the budget, a greedy structure at the budget (from random p, so a spread of module types
    and depths) and one D_delta + one D_alpha batch."""
    backbone = t5_backbone(case)
    params = backbone.param_shapes() if abstract_params else backbone.init_params(jax.random.PRNGKey(seed))
    head = backbone.task_head(data.get_task(TASK), "generate", case.target_length)
    positions = backbone.positions()
    space = backbone.space(case.space) if isinstance(case.space, str) else case.space
    expansion = expand(space, positions)
    budget = budget_params(case.budget_ratio_or_count, backbone.num_params)
    gates.validate_budget(expansion.sizes, budget)
    rng = np.random.default_rng(seed)
    keep = select_greedy(rng.random(len(expansion.candidates)), expansion.sizes, budget)
    vocab_size = backbone.config.vocab_size
    batch_delta, batch_alpha = ({k: jnp.asarray(v) for k, v in synthetic_batch(rng, case, vocab_size).items()}
                                for _ in range(2))
    scanned_config = dataclasses.replace(backbone.config, scan_layers=case.scan_layers, remat=case.remat)
    scans = t5.scanned_layers(scanned_config)
    if not scans:
        search_params = params
    elif abstract_params:
        search_params = t5.param_shapes(scanned_config)
    else:
        search_params = stack_layers(params, scans, "params")
    return Setup(case, backbone, head, params, positions, expansion.candidates,
                 np.asarray(expansion.sizes, np.float32), budget, candidates_from_mask(expansion.candidates, keep),
                 batch_delta, batch_alpha, t5.T5ForConditionalGeneration(scanned_config).apply, search_params, scans)
