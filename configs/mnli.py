"""MNLI: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 1 epochs over the D_delta half, evaluation every 200 steps.
Re-training: batch 32, 3 epochs over the full training split, evaluation every 500 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/mnli`):
  python run_search.py --config configs/mnli.py --workdir runs/mnli
writes runs/mnli/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/mnli/retrain/results.json whose test metric is the accuracy (validation_matched as test).
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("mnli", search=(32, 1, 200), retrain=(32, 3, 500), arg=arg)
