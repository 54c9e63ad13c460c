"""MULTIRC: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 16, 40 epochs over the D_delta half, evaluation every 20 steps.
Re-training: batch 16, 40 epochs over the full training split, evaluation every 20 steps.

The authors' scripts: 40 epochs, evaluation every 20 steps (the paper's Table 3 says 5/10 epochs, every 200).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/multirc`):
  python run_search.py --config configs/multirc.py --workdir runs/multirc
writes runs/multirc/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/multirc/retrain/results.json whose test metric is the F1 over answers, then exact match.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-multirc", search=(16, 40, 20), retrain=(16, 40, 20), arg=arg)
