"""Search a sparse delta structure: python run_search.py --config configs/mrpc.py[:variant] --workdir DIR.

See README.md and the config file's docstring; re-running the same command on the same workdir resumes.
"""

import os

from s3delta_jax.train import cli

cli.define_flags()


def main() -> None:
    from s3delta_jax.train.retraining import run_retrain
    from s3delta_jax.train.searching import run_search

    config, workdir, allowed = cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.allow_config_change
    structure_path = run_search(config, workdir, allowed)
    if config.retrain_after_search:
        run_retrain(config, os.path.join(workdir, "retrain"), structure_path, allowed)


if __name__ == "__main__":
    cli.run_main(main)
