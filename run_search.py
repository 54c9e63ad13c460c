"""Search a sparse delta structure: python run_search.py --config configs/mrpc.py[:variant] --workdir DIR.

See README.md and the config file's docstring; re-running the same command on the same workdir resumes.
"""

import os

from s3delta_jax.train import cli

cli.define_flags()


def main() -> None:
    from s3delta_jax.train.retrain_run import run_retrain
    from s3delta_jax.train.search_run import run_search

    config, workdir = cli.FLAGS.config, cli.FLAGS.workdir
    structure_path = run_search(config, workdir)
    if config.retrain_after_search:
        run_retrain(config, os.path.join(workdir, "retrain"), structure_path)


if __name__ == "__main__":
    cli.run_main(main)
