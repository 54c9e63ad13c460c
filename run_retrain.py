"""Re-train a searched structure: python run_retrain.py --config CFG --structure DIR/structure.json --workdir DIR2.

See README.md; re-running the same command on the same workdir resumes.
"""

from absl import flags

from s3delta_jax.train import cli

cli.define_flags()
flags.DEFINE_string("structure", None, "structure.json written by run_search.py (or a hand-made one).")
flags.mark_flag_as_required("structure")


def main() -> None:
    from s3delta_jax.train.retraining import run_retrain

    run_retrain(cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.structure, cli.FLAGS.allow_config_change)


if __name__ == "__main__":
    cli.run_main(main)
