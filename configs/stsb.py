"""STSB: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 32, 15 epochs over the D_delta half, evaluation every 50 steps.
Re-training: batch 32, 15 epochs over the full training split, evaluation every 50 steps.

The authors' scripts: 15 epochs, evaluation every 50 steps (the paper's Table 3 says 40 and 100).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/stsb`):
  python run_search.py --config configs/stsb.py --workdir runs/stsb
writes runs/stsb/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/stsb/retrain/results.json whose test metric is the Pearson correlation.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("stsb", search=(32, 15, 50), retrain=(32, 15, 50), arg=arg)
