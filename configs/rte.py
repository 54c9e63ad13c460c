"""RTE: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 16, 20 epochs over the D_delta half, evaluation every 50 steps.
Re-training: batch 16, 20 epochs over the full training split, evaluation every 50 steps.

The authors' scripts: re-training 20 epochs (the paper's Table 3 says 40).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/rte`):
  python run_search.py --config configs/rte.py --workdir runs/rte
writes runs/rte/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/rte/retrain/results.json whose test metric is the accuracy.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-rte", search=(16, 20, 50), retrain=(16, 20, 50), arg=arg)
