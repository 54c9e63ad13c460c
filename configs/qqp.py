"""QQP: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 1 epochs over the D_delta half, evaluation every 200 steps.
Re-training: batch 32, 3 epochs over the full training split, evaluation every 500 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/qqp`):
  python run_search.py --config configs/qqp.py --workdir runs/qqp
writes runs/qqp/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/qqp/retrain/results.json whose test metric is the F1.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("qqp", search=(32, 1, 200), retrain=(32, 3, 500), arg=arg)
