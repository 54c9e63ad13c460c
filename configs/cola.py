"""COLA: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 15 epochs over the D_delta half, evaluation every 100 steps.
Re-training: batch 32, 15 epochs over the full training split, evaluation every 100 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/cola`):
  python run_search.py --config configs/cola.py --workdir runs/cola
writes runs/cola/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/cola/retrain/results.json whose test metric is the Matthews correlation.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("cola", search=(32, 15, 100), retrain=(32, 15, 100), arg=arg)
