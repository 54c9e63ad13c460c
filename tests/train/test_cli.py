"""The programs' command line: help lists flags and config fields; bad input is one line and exit 2;
bugs keep their traceback. In-process through cli.run_main, except where the real program matters."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from program_runs import one_error_line

from s3delta_jax.errors import UserError
from s3delta_jax.train import cli
from s3delta_jax.train.config_check import FIELD_RULES
from s3delta_jax.train.config_file import leaf_fields, load_config

ROOT = Path(__file__).resolve().parents[2]
MRPC = str(ROOT / "configs" / "mrpc.py")
FUZZ_CASES = int(os.environ.get("S3DELTA_CONFIG_FUZZ_CASES", "40"))  # every field x value: 0


def test_python_run_search_help_lists_flags_fields_defaults_and_comments():
    done = subprocess.run([sys.executable, "run_search.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert "--workdir" in done.stdout and "--allow_config_change" in done.stdout
    budget = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["search.budget"])
    assert "0.0001389" in budget and "< 1: a ratio of the backbone parameter count" in budget


@pytest.mark.parametrize("flag", ["-h", "--help", "--helpshort", "--helpfull"])
def test_every_help_flag_exits_0_with_every_field(run_cli, flag):
    code, out, err = run_cli(flag)
    assert code == 0 and err == ""
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("  --")}
    assert listed == set(leaf_fields(load_config(str(cli.BASE_CONFIG))))
    assert "--config:" in out and "--workdir:" in out
    mesh = next(line for line in out.splitlines() if line.split()[:1] == ["mesh.data"])
    assert mesh.split()[1] == "-1" and "every device the other axes leave" in mesh
    initialize = next(line for line in out.splitlines() if line.split()[:1] == ["distributed.initialize"])
    assert "jax.distributed.initialize()" in initialize  # a comment written above its field


def test_helpfull_lists_more_flags_than_helpshort(run_cli):
    import absl.logging  # noqa: F401  (defines --verbosity, as it does in the programs through orbax)

    short = run_cli("--helpshort")[1]
    full = run_cli("--helpfull")[1]
    assert "--verbosity:" in full and "--verbosity:" not in short


def test_help_shows_the_chosen_variant_defaults(run_cli):
    code, out, _ = run_cli(f"--config={MRPC}:smoke", "--help")
    assert code == 0
    name = next(line for line in out.splitlines() if line.split()[:1] == ["model.name"])
    assert "'t5-small'" in name and "a preset" in name


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "my_config.py"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/nope.py"], "config file configs/nope.py does not exist"),
    (["--config={syntax_error}"], "my_config.py:2: syntax error"),
    ([f"--config={MRPC}:smok"], "unknown config variant 'smok': use any of lora, b035, smoke"),
    ([f"--config={MRPC}", "--config.search.bugdet=1"], "--config.search.bugdet: no such field in "
                                                        f"{MRPC}: did you mean search.budget?"),
    ([f"--config={MRPC}", "--config.search.batch_size=abc"], "--config.search.batch_size=abc: expected an integer"),
    ([f"--config={MRPC}", "--config.search.batch_size", "-3"], "search.batch_size=-3: expected an integer >= 1"),
    ([f"--config={MRPC}", "--config.search.batch_size", "--workdir=x"], "needs a value"),
    ([f"--config={MRPC}", "--config.search.batch_size=-3"], "search.batch_size=-3: expected an integer >= 1"),
    ([f"--config={MRPC}", "--config.search.estimator=second_order"], "'second_order_fd', 'second_order_exact'"),
    ([f"--config={MRPC}", "--config.search.data_split=both"], "search.data_split='both': expected one of 'halves', 'shared'"),
    ([f"--config={MRPC}", "--config.model.random_init=maybe"], "expected true or false"),
    ([f"--config={MRPC}", "--config.mesh.data=-1", "--config.mesh.model=-1"], "at most one of them -1"),
    ([f"--config={MRPC}", "--config.search.estimator=first_order", "--config.search.delta_gradient=reuse"],
     "needs a second-order estimator"),
    (["--config={not_a_config}"], "has no get_config()"),
    ([f"--config={MRPC}", "--bogus"], "Unknown command line flag 'bogus'"),
    ([], "Flag --config must have a value"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, args, expected):
    paths = {"syntax_error": write_config(tmp_path, "def get_config():\n    return dict(a=\n"),
             "not_a_config": str(ROOT / "configs" / "__init__.py")}
    args = [arg.format(**paths) for arg in args]
    if not any(arg.startswith("--workdir") for arg in args):
        args.append(f"--workdir={tmp_path / 'run'}")
    code, _, err = run_cli(*args)
    assert code == 2
    assert expected in one_error_line(err)


def test_overrides_of_every_kind_reach_main(run_cli, tmp_path):
    seen = {}

    def main():
        seen["config"] = cli.FLAGS.config

    code, _, err = run_cli(f"--config={MRPC}:smoke", f"--workdir={tmp_path}", "--config.seed", "3",
                           "--noconfig.model.random_init", "--config.retrain_after_search",
                           "--config.search.budget=0.02", "--config.mesh.rules=(('mlp', None),)",
                           "--config.model.config_overrides.d_model=32", "--config.model.tokenizer=", main=main)
    assert (code, err) == (0, "")
    config = seen["config"]
    assert (config.seed, config.model.random_init, config.retrain_after_search) == (3, False, True)
    assert config.search.budget == 0.02 and config.mesh.rules == (("mlp", None),)
    assert config.model.config_overrides.d_model == 32 and config.model.config_overrides.num_heads == 4
    assert config.model.tokenizer == ""
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked, as config_flags locks it


def test_a_user_error_from_main_is_one_line_and_exit_2(run_cli, tmp_path):
    def main():
        raise UserError("no examples in /data/train.tsv: fill it")

    code, _, err = run_cli(f"--config={MRPC}", f"--workdir={tmp_path}", main=main)
    assert code == 2 and one_error_line(err) == "error: no examples in /data/train.tsv: fill it"


def test_a_bug_in_main_keeps_its_traceback(run_cli, tmp_path):
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_cli(f"--config={MRPC}", f"--workdir={tmp_path}", main=main)
    assert cli.user_error_types() == (UserError,)


def test_a_bug_exits_1_with_a_traceback_in_a_real_process(tmp_path):
    script = ("import sys; from s3delta_jax.train import cli; cli.define_flags()\n"
              "def main(): raise ValueError('a bug')\n"
              f"sys.argv = ['run_search.py', '--config={MRPC}', '--workdir={tmp_path}']\n"
              "cli.run_main(main)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and done.stderr.strip().endswith("ValueError: a bug")


def test_every_field_of_the_base_config_has_a_rule():
    assert set(leaf_fields(load_config(str(cli.BASE_CONFIG)))) <= set(FIELD_RULES)


FUZZ_VALUES = ("abc", "", "-1", "0", "1", "2.5", "-0.5", "1e400", "nan", "[1, 2]", "{'a': 1}", "None", "true",
               "(('mlp', None),)", "99999999999999999999", "'quoted'", "(", "first_order", "local")


def fuzz_cases() -> list[tuple[str, str]]:
    fields = sorted(leaf_fields(load_config(f"{MRPC}:smoke")))
    cases = [(field, value) for field in fields for value in FUZZ_VALUES]
    return cases if FUZZ_CASES == 0 else random.Random(0).sample(cases, FUZZ_CASES)


@pytest.mark.parametrize("field,value", fuzz_cases())
def test_fuzzed_field_values_are_accepted_or_one_line_exit_2(run_cli, tmp_path, field, value):
    default = leaf_fields(load_config(f"{MRPC}:smoke"))[field]
    seen = {}
    code, _, err = run_cli(f"--config={MRPC}:smoke", f"--workdir={tmp_path}", f"--config.{field}={value}",
                           main=lambda: seen.update(leaf_fields(cli.FLAGS.config)))
    if code == 2:
        assert field in one_error_line(err) or "mesh" in err
    else:
        assert (code, err) == (0, "")
        kind = ml_collections.ConfigDict if isinstance(default, ml_collections.ConfigDict) else type(default)
        assert isinstance(seen[field], kind)


def test_a_header_only_data_file_is_one_line_naming_it(run_cli, tmp_path):
    from s3delta_jax.data import get_task, load_split

    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tlabel\tidx\n")
    code, _, err = run_cli(f"--config={MRPC}", f"--workdir={tmp_path / 'run'}",
                           main=lambda: load_split(get_task("mrpc"), "train", tmp_path))
    assert code == 2 and f"no examples in {tmp_path / 'train.tsv'}" in one_error_line(err)


def test_a_missing_data_directory_is_one_line_naming_it(run_cli, tmp_path):
    from s3delta_jax.data import get_task, load_split

    code, _, err = run_cli(f"--config={MRPC}", f"--workdir={tmp_path / 'run'}",
                           main=lambda: load_split(get_task("mrpc"), "train", tmp_path / "nope"))
    assert code == 2 and f"data directory {tmp_path / 'nope'} does not exist" in one_error_line(err)
