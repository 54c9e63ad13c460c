"""The one exception type the programs turn into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, files, budget): the message names the problem and the fix."""
