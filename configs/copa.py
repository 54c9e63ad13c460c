"""COPA: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 16, 40 epochs over the D_delta half, evaluation every 20 steps.
Re-training: batch 16, 40 epochs over the full training split, evaluation every 20 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/copa`):
  python run_search.py --config configs/copa.py --workdir runs/copa
writes runs/copa/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/copa/retrain/results.json whose test metric is the accuracy.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-copa", search=(16, 40, 20), retrain=(16, 40, 20), arg=arg)
