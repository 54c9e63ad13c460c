"""The one exception type that means bad input, shared by every package.

The programs (run_search.py, run_retrain.py) print a UserError's message as one line and exit with
code 2; every other exception is a bug and keeps its traceback (exit code 1). Input-checking errors
subclass it (e.g. `class SpaceError(UserError, ValueError)`, keeping ValueError for the callers that
catch that).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, files, budget, structure, checkpoint): the message names the problem and the fix."""
