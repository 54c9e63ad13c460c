"""Does an exported encoder classifier, loaded in PyTorch, predict what the re-training predicted?

    python benchmarks/export_predictions.py --workdir runs/mrpc-minilm/retrain --out runs/mrpc-minilm/exported

For a finished re-training of a BERT-family classifier (run_retrain.py's workdir, or WORKDIR/retrain
after run_search.py): exports it with `python -m s3delta_jax.export` as a merged checkpoint
(OUT/merged) and as a PEFT adapter (OUT/peft; `--formats merged` for a backbone with random weights), loads each with `s3delta_jax.export.torch_classifier`
(transformers + PEFT, PyTorch on the CPU), predicts the run's test split (the rows and tokenization
the run used, padded on the right in batches of 32) and compares with the run's test_predictions.txt
row by row. Prints one line per format: rows, rows that agree, and the largest logit difference
between the two formats. Exit 1 if any row differs. Needs the `evidence` extra (torch, peft).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s3delta_jax.export import torch_classifier  # noqa: E402
from s3delta_jax.export.__main__ import main as export_main  # noqa: E402
from s3delta_jax.models.registry import load_backbone  # noqa: E402
from s3delta_jax.train.prepare import load_task_data  # noqa: E402

FORMATS = ("merged", "peft")
BATCH_ROWS = 32


def padded(encoded, rows: slice) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids int64[B, L] of some encoded rows, padded on the right."""
    ids, types = encoded.source_ids[rows], encoded.token_type_ids[rows]
    length = max(len(x) for x in ids)
    batch = {name: np.zeros((len(ids), length), np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    batch["input_ids"][:] = encoded.pad_id
    for i, (row, row_types) in enumerate(zip(ids, types)):
        batch["input_ids"][i, :len(row)], batch["attention_mask"][i, :len(row)] = row, 1
        batch["token_type_ids"][i, :len(row)] = row_types
    return batch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished re-training of a BERT-family classifier")
    parser.add_argument("--out", required=True, help="a new directory; the exports go to OUT/merged and OUT/peft")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated, of merged and peft (a PEFT adapter needs a backbone loaded from a checkpoint)")
    args = parser.parse_args(argv)
    formats = args.formats.split(",")
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    expected = Path(args.workdir, "test_predictions.txt").read_text().split()
    encoded = load_task_data(config.data, load_backbone(config.model), config.seed).encoded["test"]
    batches = [{name: torch.from_numpy(array) for name, array in padded(encoded, slice(start, start + BATCH_ROWS)).items()}
               for start in range(0, len(encoded.source_ids), BATCH_ROWS)]
    logits, differing = {}, []
    for name in formats:
        export_main(["--workdir", args.workdir, "--to", name, "--out", os.path.join(args.out, name)])
        model = torch_classifier(os.path.join(args.out, name))
        with torch.no_grad():
            logits[name] = torch.cat([model(**batch) for batch in batches]).numpy()
        predictions = [str(int(label)) for label in logits[name].argmax(axis=-1)]
        agree = sum(p == e for p, e in zip(predictions, expected))
        print(f"{name}: {len(predictions)} test rows, {agree} agree with test_predictions.txt ({len(expected)} rows)")
        if predictions != expected:
            differing.append(name)
    if len(logits) == 2:
        print(f"max |merged - peft| logit difference: {float(np.abs(logits['merged'] - logits['peft']).max()):.2e}")
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
