"""run_search.py / run_retrain.py end to end, as a user runs them (subprocesses, offline)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from program_runs import ROOT, SEARCH_OUTPUTS, command, one_error_line, run


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory, subprocess_env) -> Path:
    workdir = tmp_path_factory.mktemp("smoke-search")
    started = time.monotonic()
    done = run(command("run_search.py", "configs/mrpc.py:smoke", workdir), subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"smoke search took {time.monotonic() - started:.1f} s")
    return workdir


def test_smoke_search_writes_every_output_within_budget(smoke_search):
    for name in SEARCH_OUTPUTS:
        assert (smoke_search / name).stat().st_size > 0, name
    structure = json.loads((smoke_search / "structure.json").read_text())
    assert 0 < structure["total_size"] <= structure["budget"]["params"]
    assert structure["total_size"] == sum(entry["size"] for entry in structure["chosen"])
    results = json.loads((smoke_search / "results.json").read_text())
    assert results["structure"]["trainable_params"] == structure["total_size"]
    assert set(results["val"]) == {"accuracy", "f1"}
    gates_rows = (smoke_search / "gates.tsv").read_text().splitlines()
    assert len(gates_rows) == 1 + results["search_space"]["candidates"]
    assert sum(row.endswith("\t1") for row in gates_rows[1:]) == len(structure["chosen"])
    steps = [json.loads(line)["step"] for line in (smoke_search / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, steps[-1] + 1))


def test_retrain_of_the_searched_structure_writes_results(smoke_search, tmp_path, subprocess_env):
    done = run(command("run_retrain.py", "configs/mrpc.py:smoke", tmp_path,
                       f"--structure={smoke_search / 'structure.json'}"), subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    structure = json.loads((smoke_search / "structure.json").read_text())
    assert results["trainable_params"] == structure["total_size"]
    assert results["ratio_to_backbone"] == pytest.approx(structure["total_size"] / results["backbone_params"])
    assert set(results["test"]) == {"accuracy", "f1"} and results["main_score"] == results["test"]["accuracy"]


def interrupt_midway(args: list[str], env: dict, workdir: Path, signum: int) -> subprocess.Popen:
    """Starts the program and sends `signum` once its first latest checkpoint exists; returns it ended."""
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = workdir / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not any(p.name.isdigit() for p in latest.glob("*")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    process.wait(timeout=240)
    return process


def assert_resumed_to_the_same_structure(workdir: Path, reference: Path) -> None:
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, steps[-1] + 1)), "the resumed log has gaps or repeats"
    resumed = json.loads((workdir / "structure.json").read_text())
    uninterrupted = json.loads((reference / "structure.json").read_text())
    assert resumed["chosen"] == uninterrupted["chosen"]
    assert [c["p"] for c in resumed["candidates"]] == pytest.approx([c["p"] for c in uninterrupted["candidates"]], rel=1e-5)


def test_sigkill_midway_then_rerun_resumes_to_the_same_structure(smoke_search, tmp_path, subprocess_env):
    args = command("run_search.py", "configs/mrpc.py:smoke", tmp_path, "--config.search.checkpoint_every=10")
    interrupt_midway(args, subprocess_env, tmp_path, signal.SIGKILL)
    assert not (tmp_path / "structure.json").exists()
    done = run(args, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_resumed_to_the_same_structure(tmp_path, smoke_search)


def test_sigint_saves_the_interrupted_step_and_the_rerun_ends_as_uninterrupted(smoke_search, tmp_path, subprocess_env):
    """Ctrl-C: a checkpoint at the current step (not only the last periodic one), exit 130, one line."""
    args = command("run_search.py", "configs/mrpc.py:smoke", tmp_path, "--config.search.checkpoint_every=10")
    process = interrupt_midway(args, subprocess_env, tmp_path, signal.SIGINT)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "checkpoint saved" in stderr.strip().splitlines()[-1]
    saved = max(int(p.name) for p in (tmp_path / "checkpoints" / "latest").glob("*") if p.name.isdigit())
    done = run(args, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"from step {saved}" in done.stderr + done.stdout
    assert_resumed_to_the_same_structure(tmp_path, smoke_search)


def copy_of(workdir: Path, target: Path) -> Path:
    subprocess.run(["cp", "-r", str(workdir), str(target)], check=True)
    return target


def checksums(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_rerun_of_a_finished_workdir_with_another_config_is_refused_and_changes_nothing(smoke_search, tmp_path,
                                                                                        subprocess_env):
    workdir = copy_of(smoke_search, tmp_path / "copy")
    before = checksums(workdir)
    done = run(command("run_search.py", "configs/mrpc.py:smoke", workdir, "--config.search.budget=1000"), subprocess_env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert lines[-1].startswith("error: ") and "search.budget 0.015 -> 1000" in lines[-1]
    assert checksums(workdir) == before


def test_structures_from_another_backbone_and_empty_ones_are_refused(smoke_search, tmp_path, subprocess_env):
    structure = json.loads((smoke_search / "structure.json").read_text())
    foreign = dict(structure, backbone=dict(structure["backbone"], fingerprint=dict(
        structure["backbone"]["fingerprint"], shapes_sha256="0123456789abcdef")))
    empty = dict(structure, chosen=[], total_size=0)
    for name, content, message in (("foreign.json", foreign, "was searched on another backbone"),
                                   ("empty.json", empty, "chosen is empty")):
        path = tmp_path / name
        path.write_text(json.dumps(content))
        workdir = tmp_path / f"run-{name}"
        done = run(command("run_retrain.py", "configs/mrpc.py:smoke", workdir, f"--structure={path}"), subprocess_env)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and last.startswith("error: ") and message in last, done.stderr[-2000:]
        assert not workdir.exists() or not any(workdir.iterdir()), f"{name}: the refused run wrote into its workdir"


@pytest.mark.parametrize("extra,message", [
    (["--config.search.no_such_field=1"], "no_such_field"),
    (["--config.search.budget=1"], "budget"),
    (["--config.search.fd_dropout=same"], "fd_dropout"),
    (["--config.search.hessian_dropout=shared"], "hessian_dropout 'shared' needs the estimator second_order_exact"),
    (["--config.search.remat=all"], "search.remat='all': expected one of 'none', 'full', 'dots'"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, subprocess_env, extra, message):
    done = run(command("run_search.py", "configs/mrpc.py:smoke", tmp_path, *extra), subprocess_env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1]


def test_missing_structure_file_is_one_line_and_exit_2(tmp_path, subprocess_env):
    done = run(command("run_retrain.py", "configs/mrpc.py:smoke", tmp_path,
                       f"--structure={tmp_path / 'nope.json'}"), subprocess_env)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nope.json" in last


def test_unreadable_checkpoint_is_one_line_and_exit_2_and_keeps_outputs(smoke_search, tmp_path, subprocess_env):
    workdir = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(smoke_search), str(workdir)], check=True)
    before = {name: (workdir / name).read_bytes() for name in SEARCH_OUTPUTS}
    for path in (workdir / "checkpoints").rglob("*"):  # latest and best: a run falls back to any readable one
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"not a checkpoint")
    done = run(command("run_search.py", "configs/mrpc.py:smoke", workdir), subprocess_env)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "checkpoint" in last
    assert {name: (workdir / name).read_bytes() for name in SEARCH_OUTPUTS} == before


@pytest.fixture(scope="module")
def smoke_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """The smoke T5 as Hugging Face directories: one without spiece.model, one with a truncated
    model.safetensors."""
    import jax

    from s3delta_jax.models.registry import load_backbone
    from s3delta_jax.train.config_file import load_config

    backbone = load_backbone(load_config(str(ROOT / "configs" / "mrpc.py:smoke")).model)
    root = tmp_path_factory.mktemp("smoke-models")
    without_spiece, truncated = root / "without-spiece", root / "truncated"
    for directory in (without_spiece, truncated):
        backbone.save_hf_checkpoint(backbone.init_params(jax.random.PRNGKey(0)), str(directory))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"without_spiece": without_spiece, "truncated": truncated}


SMOKE = f"--config={ROOT / 'configs' / 'mrpc.py'}:smoke"
FROM_DIRECTORY = ("--config.model.random_init=false", "--config.model.config_overrides={{}}")

# (workdir: a copy of the finished smoke search, the same unfinished, or a new one; arguments with
# {placeholders}; what the one error line says). The rows of issue 17's table that end in exit 2.
BAD_INPUTS = {
    "another config, finished": ("finished", [SMOKE, "--config.search.budget=1000"], "search.budget 0.015 -> 1000"),
    "another budget, unfinished": ("unfinished", [SMOKE, "--config.search.budget=1000"], "search.budget"),
    "another space, unfinished": ("unfinished", [SMOKE, "--config.search.space=s3pet_lora"],
                                  "search.space 's3pet_mix' -> 's3pet_lora'"),
    "model directory without spiece.model": (
        "new", [SMOKE, "--config.model.name={without_spiece}", *FROM_DIRECTORY, "--config.model.tokenizer="],
        "no spiece.model in '{without_spiece}'"),
    "truncated model.safetensors": ("new", [SMOKE, "--config.model.name={truncated}", *FROM_DIRECTORY],
                                    "{truncated}/model.safetensors"),
    "missing config file": ("finished", ["--config=configs/nope.py"], "config file configs/nope.py does not exist"),
    "config file with a syntax error": ("finished", ["--config={syntax_error}"], "my_config.py:2: syntax error"),
    "unknown variant": ("finished", [f"{SMOKE[:-len('smoke')]}smok"], "unknown config variant 'smok'"),
    "unknown field": ("finished", [SMOKE, "--config.search.bugdet=1"], "did you mean search.budget?"),
    "workdir under a file": ("new", [SMOKE, "--workdir={a_file}/run"], "lies under {a_file}, which is a file"),
    "a file as workdir": ("new", [SMOKE, "--workdir={a_file}"], "--workdir {a_file} is a file"),
    "unwritable workdir": ("finished", [SMOKE], "is not writable"),
    "header-only data file": ("new", [SMOKE, "--config.data.task=mrpc", "--config.data.path={header_only}"],
                              "no examples in {header_only}/train.tsv"),
}


def search_main() -> None:
    """run_search.py's main, without its re-training (the smoke config does not chain it)."""
    from s3delta_jax.train import cli
    from s3delta_jax.train.searching import run_search

    run_search(cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.allow_config_change)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_and_changes_no_file(case, smoke_search, smoke_model_dirs, run_cli,
                                                              tmp_path, monkeypatch):
    """Issue 17's table, run by the program's main on a finished or unfinished copy of the smoke search,
    or on a new workdir; every file the run could touch (workdir, model, data, config) is checksummed."""
    kind, args, expected = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    (inputs / "header-only").mkdir(parents=True)
    for split in ("train", "validation"):
        (inputs / "header-only" / f"{split}.tsv").write_text("sentence1\tsentence2\tlabel\tidx\n")
    (inputs / "my_config.py").write_text("def get_config():\n    return dict(a=\n")
    (inputs / "a_file").write_text("not a directory\n")
    places = {**{name: str(path) for name, path in smoke_model_dirs.items()}, "a_file": str(inputs / "a_file"),
              "header_only": str(inputs / "header-only"), "syntax_error": str(inputs / "my_config.py")}
    workdir = tmp_path / "run"
    if kind != "new":
        copy_of(smoke_search, workdir)
    if kind == "unfinished":  # as after a kill before the end: checkpoints, no final outputs
        for name in ("structure.json", "gates.tsv", "heatmap.png", "results.json"):
            (workdir / name).unlink()
    if case == "unwritable workdir":  # as root sees a read-only mount (root passes permission checks)
        from s3delta_jax.train import workdir as workdir_lib

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(workdir_lib.tempfile, "TemporaryFile", refuse)
    args = [arg.format(**places) for arg in args]
    if not any(arg.startswith("--workdir") for arg in args):
        args.append(f"--workdir={workdir}")
    before = {path: checksums(path) for path in (workdir, *smoke_model_dirs.values(), inputs)}

    code, _, err = run_cli(*args, main=search_main)

    assert code == 2, err[-2000:]
    assert expected.format(**places) in one_error_line(err)
    assert {path: checksums(path) for path in before} == before
    assert kind != "new" or not workdir.exists() or not any(workdir.iterdir())
