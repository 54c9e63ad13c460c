"""CB: S3PET search then re-training on t5-large, the paper's setting (reference sections 4-5, 8).

Search: batch 15, 40 epochs over the D_delta half, evaluation every 20 steps.
Re-training: batch 16, 40 epochs over the full training split, evaluation every 20 steps.

The authors' scripts: search batch 15 and 40 epochs (the paper's Table 3 says 16 and 60).

Run (network for the hub, or `--config.model.name=/path/to/t5-large --config.data.path=/path/to/cb`):
  python run_search.py --config configs/cb.py --workdir runs/cb
writes runs/cb/structure.json (about 100k trainable parameters of 737.6M, 60-70 modules) and, with
re-training chained, runs/cb/retrain/results.json whose test metric is the macro-F1, then accuracy.
Variants: `:lora` (S3PET-L), `:b035` (0.35 per ten-thousand), `:smoke` (offline, tiny, about a minute).
"""

from configs import base


def get_config(arg=None):
    return base.task_config("superglue-cb", search=(15, 40, 20), retrain=(16, 40, 20), arg=arg)
