"""What run_search.py and run_retrain.py share: flags, config loading, and the exit-code-2 contract.

Bad input (config, files, budget, structure, checkpoint) ends with one line on stderr naming the
problem and the fix, and exit code 2; nothing already in the workdir is removed.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

from s3delta_jax.train.errors import UserError

FLAGS = flags.FLAGS
USAGE_EXIT_CODE = 2


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mrpc.py or configs/mrpc.py:smoke.")
    flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints; re-running resumes.")
    flags.mark_flags_as_required(["config", "workdir"])


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: each carries a one-line message with the fix."""
    from s3delta_jax.models.hub import HubUnavailableError

    return (UserError, ValueError, HubUnavailableError, FileNotFoundError, KeyError)


def run_main(main: Callable[[], None]) -> None:
    """Parses flags (bad ones exit 2 with one line) and runs `main`, turning user errors into exit 2."""
    try:
        FLAGS(sys.argv)
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as error:
        _fail(f"bad command line: {_one_line(error)} (see --helpfull for the flags and the config's fields)")
    try:
        main()
    except user_error_types() as error:
        _fail(_one_line(error))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().replace("\n", " ")
    return text if text else type(error).__name__


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)
