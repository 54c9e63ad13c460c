"""What run_search.py and run_retrain.py share: flags, config loading, help, and the exit codes.

  exit 0    done; or --help / -h / --helpshort / --helpfull, which list the flags and every config
            field with its default and comment (of --config's file, else configs/base.py)
  exit 2    bad input (command line, config, files, budget, structure, checkpoint, workdir): one
            line `error: ...` on stderr naming the problem and the fix; nothing in the workdir removed
  exit 1    anything else is a bug and keeps its traceback
  130, 143  interrupted by SIGINT / SIGTERM after saving a checkpoint (see loop.run_phase)

`run_main` loads `--config=FILE[:VARIANT]`, applies the `--config.FIELD=VALUE` overrides (see
config_file.py) and checks every field (config_check.validate_config) before `main` runs, so a bad
field fails before any model is loaded. `FLAGS.config` is then the ConfigDict.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
from absl import flags

from s3delta_jax.errors import UserError
from s3delta_jax.train import config_docs
from s3delta_jax.train.config_check import validate_config
from s3delta_jax.train.config_file import apply_overrides, load_config, one_line, split_overrides

FLAGS = flags.FLAGS
USAGE_EXIT_CODE = 2
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull")
BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "base.py"


class _ConfigFileParser(flags.ArgumentParser):
    """`--config=FILE[:VARIANT]` -> the file's ConfigDict (a ConfigError, exit 2, when it cannot load)."""

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        return load_config(argument)

    def flag_type(self) -> str:
        return "config file"


def define_flags() -> None:
    """--config, --workdir and --allow_config_change, for both programs."""
    flags.DEFINE(_ConfigFileParser(), "config", None,
                 "Config file, e.g. configs/mrpc.py or configs/mrpc.py:smoke; override any field with "
                 "--config.FIELD=VALUE (the fields are listed below).", flags.FLAGS)
    flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints; re-running the same command resumes.")
    flags.DEFINE_list("allow_config_change", [],
                      "Config fields that may differ from the run already in --workdir (comma-separated "
                      "dotted fields or patterns, or 'safe' for all that are safe to change: see workdir.py).")
    flags.mark_flags_as_required(["config", "workdir"])


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: each carries a one-line message with the fix."""
    return (UserError,)


def run_main(main: Callable[[], None]) -> None:
    """Parses the command line and the config (bad ones exit 2 with one line, --help exits 0), then runs
    `main`, turning user errors into exit 2."""
    argv, overrides = split_overrides(sys.argv)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        _print_help(argv, full=any(arg.lstrip("-") == "helpfull" for arg in argv[1:]))
        sys.exit(0)
    try:
        FLAGS(argv)
        apply_overrides(FLAGS.config, overrides, _config_spec(argv))
        FLAGS.config.lock()
        validate_config(FLAGS.config)
    except flags.Error as error:
        _fail(f"bad command line: {one_line(error)} (see --help for the flags and the config's fields)")
    except user_error_types() as error:
        _fail(one_line(error))
    try:
        main()
    except user_error_types() as error:
        _fail(one_line(error))


def _print_help(argv: Sequence[str], full: bool) -> None:
    """The program's flags (every flag with `full`) and the fields of the config named by --config."""
    spec = _config_spec(argv)
    try:
        config = load_config(spec or str(BASE_CONFIG))
    except UserError as error:
        _fail(one_line(error))
    print(f"usage: python {Path(argv[0]).name} --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]\n")
    print("flags:")
    for flag in _listed_flags(argv[0], full):
        default = "" if flag.default in (None, []) else f" (default: {flag.default_as_str})"
        print(f"  --{flag.name}: {flag.help}{default}")
    comments = config_docs.field_comments(BASE_CONFIG)
    if spec:
        comments = {**config_docs.field_comments(spec.partition(":")[0]), **comments}
    print(f"\nconfig fields of {spec or BASE_CONFIG.relative_to(BASE_CONFIG.parents[1])} "
          "(set any with --config.FIELD=VALUE):")
    print("\n".join(config_docs.field_table(config, comments)))


def _config_spec(argv: Sequence[str]) -> str | None:
    """The value of --config in `argv` (`--config=X` or `--config X`), or None."""
    for index, arg in enumerate(argv[1:], start=1):
        name, equals, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "config":
            return value if equals else (argv[index + 1] if index + 1 < len(argv) else None)
    return None


def _listed_flags(program: str, full: bool) -> list[flags.Flag]:
    """This module's flags and the program's own (`full`: every defined flag), each once."""
    by_module = FLAGS.flags_by_module_dict()
    modules = list(by_module) if full else [__name__, program]
    listed = {flag.name: flag for module in modules for flag in by_module.get(module, [])}
    return sorted(listed.values(), key=lambda flag: flag.name)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)
