"""The `Backbone` interface: all that the programs know of a model family (t5x's BaseModel in spirit).

A Backbone is one model of a family before its weights are placed on devices: its architecture
(a Flax module), its tokenizer, and where its weights come from (a Hugging Face checkpoint
directory, or random weights of a preset's shapes). `s3delta_jax.train` drives any Backbone:

    backbone = registry.load_backbone(config.model)            # any registered family
    partitioner = Partitioner.create(mesh, backbone.logical_axes(), backbone.param_shapes())
    params = backbone.load_params()  or  backbone.init_params(rng)
    candidates = expand(backbone.space("s3pet_mix"), backbone.positions()).candidates
    encoded = backbone.encode(task, examples, max_length)    # batches: see data.pipeline
    head = backbone.task_head(task, eval_method, max_decode_length)
    head.loss(apply_fn, params, batch, dropout_key, extra)    # extra = head.init_extra(key)
    outputs = head.predict(apply_fn, params, batch, extra)   # jitted by train.evaluate
    strings = head.predictions(np.asarray(outputs))          # scored by data.compute_metrics

`apply_fn` has the signature of `backbone.module.apply` and carries the delta modules
(`deltas.with_deltas`), so a head never knows whether deltas are there. The search may run the
module in another form, `backbone.search_model(scan_layers, remat)`: its repeated layers under
nn.scan (params stacked by `deltas.scan.stack_layers`) or rematerialised, where the family can.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import numpy as np

from s3delta_jax.data import EncodedExamples, Example, Task
from s3delta_jax.deltas.positions import Position, discover_positions
from s3delta_jax.deltas.scan import ScannedLayers
from s3delta_jax.deltas.spaces import Space, SpaceError
from s3delta_jax.errors import UserError
from s3delta_jax.models import checkpoint_files

ApplyFn = Callable[..., Any]
Params = Any
Batch = Mapping[str, jax.Array]


class TaskHead(abc.ABC):
    """What a backbone does for one task: its loss, its always-trained parameters and its predictions.

    `predict_inputs` names the batch arrays `predict` reads (evaluation passes only those, so that
    the number of compiled shapes stays small).
    """

    predict_inputs: tuple[str, ...] = ("input_ids", "attention_mask")

    def init_extra(self, key: jax.Array) -> Params | None:
        """Parameters trained in every run and outside the budget (a classifier), or None."""
        del key
        return None

    @abc.abstractmethod
    def loss(self, apply_fn: ApplyFn, params: Params, batch: Batch, dropout_key: jax.Array,
             extra: Params | None = None) -> jax.Array:
        """The scalar training loss on `batch` with dropout on (the Searcher's and Retrainer's loss_fn)."""

    @abc.abstractmethod
    def predict(self, apply_fn: ApplyFn, params: Params, batch: Batch, extra: Params | None = None) -> jax.Array:
        """Jittable: outputs with one row per batch row (tokens, label indices, logits or scores)."""

    @abc.abstractmethod
    def predictions(self, outputs: np.ndarray) -> list[str]:
        """The prediction strings of `predict`'s rows, as `data.compute_metrics` reads them."""


class LayerOptionError(UserError, ValueError):
    """A layer scan or rematerialisation that the model family does not offer."""


@dataclasses.dataclass(frozen=True)
class SearchModel:
    """The module the search steps run, and the layout of its params.

    `scans`: the layers it runs under nn.scan (the backbone's params go through
    `deltas.scan.stack_layers(params, scans)` before they reach it; () when none);
    `param_shapes` / `logical_axes`: of that layout, for placing the params on the mesh.
    """

    module: nn.Module
    scans: tuple[ScannedLayers, ...]
    param_shapes: Params
    logical_axes: Params


class Backbone(abc.ABC):
    """One frozen model of a family (see the module docstring).

    Class attributes of a family: `family` (its registry name), `spaces` and `baselines` (preset
    search spaces and manual structures, as rules on the family's module names), and
    `hf_auto_class`: the `transformers` auto class that loads its Hugging Face checkpoints (None: the
    family has no Hugging Face format, so s3delta_jax.export refuses it; a family that names one
    implements `hf_state_dict`, `save_hf_checkpoint` and `save_tokenizer`).
    Attributes: `name` (what the config named), `module` (the Flax module), `tokenizer`,
    `checkpoint_dir` (where the weights are read from; None for random weights).
    """

    family: ClassVar[str]
    spaces: ClassVar[Mapping[str, Space]]
    baselines: ClassVar[Mapping[str, Space]]
    hf_auto_class: ClassVar[str | None] = None

    name: str
    module: nn.Module
    tokenizer: Any
    checkpoint_dir: str | None

    @abc.abstractmethod
    def param_shapes(self) -> Params:
        """The params pytree as `jax.ShapeDtypeStruct`s (no weights)."""

    @abc.abstractmethod
    def logical_axes(self) -> Params:
        """The params pytree of `PartitionSpec`s of logical axis names ('embed', 'mlp', ...)."""

    @abc.abstractmethod
    def init_params(self, rng: jax.Array) -> Params:
        """Random params of the architecture (jittable, so that they can be created sharded)."""

    @abc.abstractmethod
    def load_params(self) -> Params:
        """The checkpoint's params as host arrays; only when `checkpoint_dir` is set."""

    @abc.abstractmethod
    def example_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) of one `module.apply` call, arrays as `jax.ShapeDtypeStruct`s, for tracing."""

    @abc.abstractmethod
    def encode(self, task: Task, examples: Sequence[Example], max_length: int | None) -> EncodedExamples:
        """Token ids of `examples`, truncated to `max_length` source tokens (None: the task's default)."""

    @abc.abstractmethod
    def task_head(self, task: Task, eval_method: str, max_decode_length: int) -> TaskHead:
        """The loss, extra parameters and predictions of `task` on this backbone."""

    @property
    def num_params(self) -> int:
        """The budget's denominator: every frozen parameter of the backbone."""
        return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(self.param_shapes()))

    def search_model(self, scan_layers: bool = False, remat: str = "none") -> SearchModel:
        """The module for the search steps: with `scan_layers` its repeated layers under nn.scan (one
        compiled layer body however deep the model is), with `remat` ('full', 'dots') each layer
        recomputed in the backward pass instead of stored. A family without either refuses them."""
        if scan_layers or remat != "none":
            raise LayerOptionError(f"the {self.family} family cannot scan or rematerialise its layers: set "
                                   "search.scan_layers=False and search.remat=none")
        return SearchModel(self.module, (), self.param_shapes(), self.logical_axes())

    def positions(self) -> list[Position]:
        """Where deltas can act, traced from shapes only."""
        args, kwargs = self.example_inputs()
        return discover_positions(self.module, *args, **kwargs)

    def space(self, name: str) -> Space:
        """A preset search space of the family by name."""
        if name not in self.spaces:
            raise SpaceError(f"unknown search space {name!r} for {self.family} backbones: use one of "
                             f"{', '.join(self.spaces)}")
        return self.spaces[name]

    def baseline(self, name: str) -> Space:
        """A manual structure of the family (paper Table 2) by name, as a one-pass space."""
        if name not in self.baselines:
            raise SpaceError(f"unknown baseline {name!r} for {self.family} backbones: use one of "
                             f"{', '.join(self.baselines)}")
        return self.baselines[name]

    def weight_files(self) -> dict[str, int]:
        """{file name: size} of the loaded checkpoint's files ({} for random weights)."""
        return checkpoint_files.files_fingerprint(self.checkpoint_dir) if self.checkpoint_dir else {}

    def hf_state_dict(self, params: Params) -> dict[str, np.ndarray]:
        """The Hugging Face state dict (torch layout, numpy arrays) of Flax `params`."""
        raise NotImplementedError(f"the {self.family} family has no Hugging Face format")

    def save_hf_checkpoint(self, params: Params, directory: str) -> None:
        """Writes config.json and model.safetensors of this architecture with `params` into `directory`."""
        raise NotImplementedError(f"the {self.family} family has no Hugging Face format")

    def save_tokenizer(self, directory: str) -> None:
        """Writes the tokenizer's files into `directory` (nothing for a tokenizer without files)."""
        raise NotImplementedError(f"the {self.family} family has no Hugging Face format")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the backbone a run or a structure belongs to: family, name, parameter count,
        a checksum of the parameter shapes, and the weight files' names and sizes."""
        shapes = sorted((jax.tree_util.keystr(path), tuple(leaf.shape), str(leaf.dtype))
                        for path, leaf in jax.tree_util.tree_leaves_with_path(self.param_shapes()))
        digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
        return {"family": self.family, "name": self.name, "num_params": self.num_params, "shapes_sha256": digest,
                "weights": self.weight_files() if self.checkpoint_dir else "random"}
