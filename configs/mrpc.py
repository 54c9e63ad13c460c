"""MRPC: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 20 epochs over the D_delta half, evaluation every 50 steps.
Re-training: batch 32, 20 epochs over the full training split, evaluation every 50 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/mrpc`):
  python run_search.py --config configs/mrpc.py --workdir runs/mrpc
writes runs/mrpc/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/mrpc/retrain/results.json whose test metric is the F1 (paper, S3PET-M@1.39: 92.13 +- 2.09 over 4 seeds).
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("mrpc", search=(32, 20, 50), retrain=(32, 20, 50), arg=arg)
