"""Export a finished re-training as a Hugging Face checkpoint or a PEFT adapter.

    python -m s3delta_jax.export --workdir runs/mrpc-retrain --to merged --out exported/
    python -m s3delta_jax.export --workdir runs/mrpc-retrain --to peft --out adapter/

exit 0: written (one line per file; with --allow_partial a warning line names what was left out);
exit 2: bad input, one line `error: ...` on stderr and nothing written; exit 1: a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from s3delta_jax.errors import UserError
from s3delta_jax.export.merged import export_merged
from s3delta_jax.export.output_dir import check_output_dir
from s3delta_jax.export.peft_format import export_peft
from s3delta_jax.export.workdir import load_retrained
from s3delta_jax.train.config_file import one_line

EXPORTERS = {"merged": export_merged, "peft": export_peft}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m s3delta_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the workdir of a finished run_retrain.py run")
    parser.add_argument("--to", required=True, choices=sorted(EXPORTERS),
                        help="merged: a Hugging Face checkpoint with the deltas folded in; peft: a PEFT LoRA adapter")
    parser.add_argument("--out", required=True, help="a new or empty directory to write into")
    parser.add_argument("--allow_partial", action="store_true",
                        help="leave out the deltas the format cannot hold (and say which) instead of refusing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the export; exits 2 with one `error:` line on bad input."""
    args = parse_args(argv)
    try:
        check_output_dir(args.out)
        report = EXPORTERS[args.to](load_retrained(args.workdir), args.out, allow_partial=args.allow_partial)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in report.files:
        print(f"wrote {report.directory}/{name}")
    if report.warning:
        print(report.warning, file=sys.stderr)


if __name__ == "__main__":
    main()
