"""SST2: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 5 epochs over the D_delta half, evaluation every 150 steps.
Re-training: batch 32, 5 epochs over the full training split, evaluation every 150 steps.

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/sst2`):
  python run_search.py --config configs/sst2.py --workdir runs/sst2
writes runs/sst2/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/sst2/retrain/results.json whose test metric is the accuracy.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("sst2", search=(32, 5, 150), retrain=(32, 5, 150), arg=arg)
