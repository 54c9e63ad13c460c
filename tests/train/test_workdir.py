"""prepare_workdir's up-front checks, and the run identity that decides between resume and refusal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from s3delta_jax.errors import UserError
from s3delta_jax.train.config_file import load_config
from s3delta_jax.train.workdir import RUN_FILE, check_run_identity, prepare_workdir

ROOT = Path(__file__).resolve().parents[2]
FINGERPRINT = {"family": "t5", "num_params": 123456, "shapes_sha256": "abc", "weights": "random"}


def smoke_config(**changes) -> dict:
    """configs/mrpc.py:smoke as a plain dict, with `changes` ({"search.budget": 0.02}) applied."""
    config = load_config(f"{ROOT / 'configs' / 'mrpc.py'}:smoke").to_dict()
    for field, value in changes.items():
        *parents, name = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def started_run(tmp_path) -> Path:
    """A workdir whose run was started with the smoke config and finished (outputs written)."""
    assert check_run_identity(str(tmp_path), smoke_config(), FINGERPRINT) is False
    (tmp_path / "results.json").write_text('{"phase": "search"}\n')
    (tmp_path / "checkpoints" / "latest" / "32").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest" / "32" / "files.json").write_text("{}\n")
    return tmp_path


def test_a_new_run_records_its_identity_and_the_same_one_resumes(started_run):
    record = json.loads((started_run / RUN_FILE).read_text())
    assert record["config"]["search"]["budget"] == 0.015 and record["backbone"] == FINGERPRINT
    assert check_run_identity(str(started_run), smoke_config(), dict(FINGERPRINT)) is True


@pytest.mark.parametrize("changes,shown", [
    ({"search.budget": 0.02}, "search.budget 0.015 -> 0.02"),
    ({"search.space": "s3pet_lora", "seed": 3}, "search.space 's3pet_mix' -> 's3pet_lora'"),
])
def test_another_config_is_refused_naming_the_change_and_nothing_is_written(started_run, changes, shown):
    before = checksums(started_run)
    with pytest.raises(UserError) as refused:
        check_run_identity(str(started_run), smoke_config(**changes), FINGERPRINT, allowed=["safe"])
    message = str(refused.value)
    assert "\n" not in message and shown in message and "new --workdir" in message
    assert checksums(started_run) == before


def test_a_safe_change_needs_the_flag_and_then_continues_the_run(started_run):
    changed = smoke_config(**{"search.eval_batch_size": 8, "mesh.data": 2})
    with pytest.raises(UserError, match=r"--allow_config_change=mesh.data,search.eval_batch_size \(or =safe\)"):
        check_run_identity(str(started_run), changed, FINGERPRINT)
    assert check_run_identity(str(started_run), changed, FINGERPRINT, allowed=["search.eval_batch_size", "mesh.*"])
    record = json.loads((started_run / RUN_FILE).read_text())
    assert record["config"]["search"]["eval_batch_size"] == 8
    assert record["changes"] == [{"search.eval_batch_size": [64, 8], "mesh.data": [-1, 2]}]
    assert check_run_identity(str(started_run), changed, FINGERPRINT) is True


def test_every_process_of_a_multi_process_run_shares_its_identity(tmp_path):
    """Process 0 records the run; process 1 (another process_id, same everything else) finds it the same
    run, and so does a later resume of process 0; another process count is still a change."""
    process = {"distributed.num_processes": 2, "distributed.coordinator_address": "host0:1234"}
    assert check_run_identity(str(tmp_path), smoke_config(**process, **{"distributed.process_id": 0}),
                              FINGERPRINT) is False
    assert "process_id" not in json.loads((tmp_path / RUN_FILE).read_text())["config"]["distributed"]
    for index in (1, 0):
        assert check_run_identity(str(tmp_path), smoke_config(**process, **{"distributed.process_id": index}),
                                  FINGERPRINT, write=index == 0) is True
    with pytest.raises(UserError, match="distributed.num_processes 2 -> 4"):
        check_run_identity(str(tmp_path), smoke_config(**{**process, "distributed.num_processes": 4}), FINGERPRINT)


def test_a_run_recorded_before_a_field_existed_resumes_only_at_its_old_behaviour(tmp_path):
    """A run.json without search.scan_layers / remat (recorded before they existed) is the same run with
    their values of then; another value is a change, refused."""
    old = smoke_config()
    del old["search"]["scan_layers"], old["search"]["remat"]
    assert check_run_identity(str(tmp_path), old, FINGERPRINT) is False
    assert check_run_identity(str(tmp_path), smoke_config(), FINGERPRINT) is True
    with pytest.raises(UserError, match=r"search\.scan_layers False -> True"):
        check_run_identity(str(tmp_path), smoke_config(**{"search.scan_layers": True}), FINGERPRINT)


def test_naming_an_unsafe_field_does_not_let_it_change(started_run):
    with pytest.raises(UserError, match="cannot change within a run"):
        check_run_identity(str(started_run), smoke_config(**{"search.learning_rate": 1e-2}), FINGERPRINT,
                           allowed=["search.learning_rate"])


def test_another_backbone_is_refused(started_run):
    with pytest.raises(UserError, match="backbone.num_params 123456 -> 654321"):
        check_run_identity(str(started_run), smoke_config(), {**FINGERPRINT, "num_params": 654321}, allowed=["safe"])


def test_at_most_a_few_changes_are_shown(started_run):
    changed = smoke_config(**{"seed": 1, "search.tau": 2.0, "search.l0_weight": 1.0, "search.epochs": 3,
                              "retrain.epochs": 4})
    with pytest.raises(UserError, match=r"\(and 2 more\)"):
        check_run_identity(str(started_run), changed, FINGERPRINT)


def test_an_unknown_field_in_the_allow_list_is_an_error(started_run):
    with pytest.raises(UserError, match="search.eval_bach_size"):
        check_run_identity(str(started_run), smoke_config(), FINGERPRINT, allowed=["search.eval_bach_size"])


def test_checkpoints_without_a_run_file_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "latest").mkdir(parents=True)
    with pytest.raises(UserError, match="no run.json"):
        check_run_identity(str(tmp_path), smoke_config(), FINGERPRINT)
    assert not (tmp_path / RUN_FILE).exists()


def test_prepare_workdir_creates_missing_directories(tmp_path):
    path = tmp_path / "runs" / "mrpc"
    assert prepare_workdir(str(path)) == str(path) and path.is_dir()


def test_a_file_given_as_workdir_is_refused(tmp_path):
    file = tmp_path / "results.json"
    file.write_text("{}")
    with pytest.raises(UserError, match=f"--workdir {file} is a file"):
        prepare_workdir(str(file))


def test_a_workdir_under_a_file_is_refused(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(UserError, match=f"lies under {file}, which is a file"):
        prepare_workdir(str(file / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_an_unwritable_workdir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match=f"--workdir {locked} is not writable"):
            prepare_workdir(str(locked))
    finally:
        locked.chmod(0o700)


def test_a_failed_write_probe_is_reported_as_unwritable(tmp_path, monkeypatch):
    """The same path as root sees it on a read-only mount (root passes permission checks)."""
    from s3delta_jax.train import workdir as workdir_lib

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(workdir_lib.tempfile, "TemporaryFile", refuse)
    with pytest.raises(UserError, match=r"is not writable \(Permission denied\)"):
        prepare_workdir(str(tmp_path))
