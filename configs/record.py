"""RECORD: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 5, 1 epochs over the D_delta half, evaluation every 200 steps.
Re-training: batch 8, 1 epochs over the full training split, evaluation every 200 steps.

The authors' scripts: search batch 5 (the paper's Table 3 says 8).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/record`):
  python run_search.py --config configs/record.py --workdir runs/record
writes runs/record/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/record/retrain/results.json whose test metric is the exact match (the selection key), then token F1.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-record", search=(5, 1, 200), retrain=(8, 1, 200), arg=arg)
