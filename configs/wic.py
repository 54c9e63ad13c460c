"""WIC: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 16, 15 epochs over the D_delta half, evaluation every 100 steps.
Re-training: batch 16, 15 epochs over the full training split, evaluation every 100 steps.

The authors' scripts: 15 epochs (the paper's Table 3 says 20).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/wic`):
  python run_search.py --config configs/wic.py --workdir runs/wic
writes runs/wic/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/wic/retrain/results.json whose test metric is the accuracy.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-wic", search=(16, 15, 100), retrain=(16, 15, 100), arg=arg)
