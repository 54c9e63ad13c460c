"""Fixtures of the program tests: the command line run in this process."""

from __future__ import annotations

import sys

import pytest

from s3delta_jax.train import cli


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`run_cli(*args, main=...) -> (exit code, stdout, stderr)` of cli.run_main in this process."""
    if "workdir" not in cli.FLAGS:
        cli.define_flags()

    def call(*args: str, main=lambda: None):
        monkeypatch.setattr(sys, "argv", ["run_search.py", *args])
        cli.FLAGS.unparse_flags()
        try:
            cli.run_main(main)
            code = 0
        except SystemExit as stopped:
            code = stopped.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call
