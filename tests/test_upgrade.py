"""Upgrading a real state dir written by the release before schema 2 (tests/fixtures/state-v1,
made by tests/fixtures/make_state_v1.py), and refusing one written by a newer trainsup."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from support import TRAINSUP, Cli, DaemonProcess
from trainsup.batch import Batch
from trainsup.jobs import schema
from trainsup.jobs.spec import JobSpec
from trainsup.jobs.store import HeartbeatCalibration, Store

FIXTURE = Path(__file__).parent / "fixtures" / "state-v1"
JOB_COLUMNS = ("id, name, state, state_since, submitted_at, spec_json, spec_text, spec_path, environment_json,"
               " checkpoint_dir, next_start_at, stop_requested, result")
ATTEMPT_COLUMNS = ("job_id, number, run_dir, log_path, boot_id, started_at, monitor_pid, monitor_started, job_pid,"
                   " ended_at, exit_code, signal, reason, detail, checkpoint_before, checkpoint_after,"
                   " peak_gpu_memory, gpu_uuids")


def copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    shutil.copytree(FIXTURE, root)
    return root


def read_only(db_path: Path) -> sqlite3.Connection:
    """Reading the committed fixture itself must not leave -wal/-shm files in the repository."""
    immutable = "&immutable=1" if db_path.parent == FIXTURE else ""
    return sqlite3.connect(f"file:{db_path}?mode=ro{immutable}", uri=True)


def snapshot(db_path: Path) -> dict[str, list[tuple]]:
    """Everything schema 2 keeps as it was: jobs, attempts (but their batch) and events."""
    db = read_only(db_path)
    try:
        return {
            "jobs": db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id").fetchall(),
            "attempts": db.execute(f"SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY job_id, number").fetchall(),
            "events": db.execute("SELECT id, job_id, at, kind, message FROM events ORDER BY id").fetchall(),
        }
    finally:
        db.close()


def memory(db_path: Path) -> dict[str, object]:
    db = read_only(db_path)
    try:
        return {name: json.loads(value) for name, value in db.execute("SELECT name, value_json FROM memory")}
    finally:
        db.close()


def ids_by_name(db_path: Path) -> dict[str, str]:
    db = read_only(db_path)
    try:
        return dict(db.execute("SELECT name, id FROM jobs"))
    finally:
        db.close()


def test_the_fixture_is_a_schema_1_state_dir_in_one_file():
    assert schema.read_version(FIXTURE / "trainsup.db") == 1
    assert not list(FIXTURE.glob("trainsup.db-*")), "checkpoint the WAL into the file before committing"
    kinds = {name.split(":")[0] for name in memory(FIXTURE / "trainsup.db")}
    assert kinds == {"batch", "hang", "budget_reset"}


def test_the_daemon_side_open_migrates_a_version_1_database(tmp_path: Path):
    db_path = copy_fixture(tmp_path) / "trainsup.db"
    before, old_memory, ids = snapshot(db_path), memory(db_path), ids_by_name(db_path)

    store = Store.open(db_path)

    assert store._db.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION == 3
    assert snapshot(db_path) == before, "jobs, attempts and events are as they were"
    assert not schema.backup_path(db_path, 1).exists(), "the copy goes once the upgrade is committed"
    for name, value in old_memory.items():
        kind, _, key = name.partition(":")
        if kind == "batch":
            job_name, _, global_batch = key.rpartition(":")
            assert store.remembered_micro(job_name, int(global_batch)) == value
        elif kind == "hang":
            assert store.heartbeat_calibration(key) == HeartbeatCalibration(
                value["gaps"], value["longest_gap"], value["ever_beat"])
        else:
            assert store.job(key).budget_reset_at == value
    assert store.heartbeat_calibration(ids["heartbeats"]).gaps > 0
    assert store.job(ids["restarted"]).budget_reset_at is not None
    assert store.job(ids["batch-oom"]).batch == Batch(micro=2, grad_accum=4)
    assert [a.batch for a in store.attempts(ids["batch-oom"])] == [Batch(4, 2), Batch(2, 4)]
    assert all(a.hang_verdict is None for job in store.jobs() for a in store.attempts(job.id))


def test_specs_written_by_version_1_validate_as_job_specs(tmp_path: Path):
    store = Store.open(copy_fixture(tmp_path) / "trainsup.db")
    for job in store.jobs():
        assert isinstance(job.spec, JobSpec)
        assert job.spec.name == job.name
        stored = json.loads(job.spec_json)
        dumped = job.spec.model_dump(mode="json", by_alias=True)
        assert {k: v for k, v in dumped.items() if k in stored} == stored  # fields added later take defaults
        assert JobSpec.model_validate_json(job.spec.model_dump_json(by_alias=True)) == job.spec
    batch_oom = next(j for j in store.jobs() if j.name == "batch-oom")
    assert batch_oom.spec.batch_size.global_ == 8


def newer_state_dir(tmp_path: Path) -> tuple[dict[str, str], Path, bytes]:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    db = sqlite3.connect(root / "trainsup.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, future TEXT)")
    db.execute("PRAGMA user_version=99")
    db.close()
    path = root / "trainsup.db"
    return {"TRAINSUP_HOME": str(root), "PATH": "/usr/local/bin:/usr/bin:/bin"}, path, path.read_bytes()


def sentence_for_newer(path: Path) -> str:
    return (f"trainsup: {path} was written by a newer trainsup (schema version 99; this one reads up to 3):"
            " upgrade trainsup or use another TRAINSUP_HOME.")


def test_the_daemon_refuses_a_newer_database_and_leaves_it_untouched(tmp_path: Path):
    env, path, content = newer_state_dir(tmp_path)
    result = subprocess.run([TRAINSUP, "daemon"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == sentence_for_newer(path)
    assert path.read_bytes() == content
    assert not list(path.parent.glob("trainsup.db?*")), "no WAL, journal or backup beside it"


def test_doctor_reports_an_out_of_date_database_as_a_failed_check(tmp_path: Path):
    env, path, content = newer_state_dir(tmp_path)
    result = Cli(env).run("doctor", "--json", check=False)
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["database"]["ok"] is False
    assert checks["database"]["detail"] == sentence_for_newer(path).removeprefix("trainsup: ")
    assert path.read_bytes() == content


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["show", "anything"], ["logs", "anything"]])
def test_the_cli_says_which_side_is_out_of_date(tmp_path: Path, command: list[str]):
    env, path, content = newer_state_dir(tmp_path)
    result = Cli(env).run(*command, check=False)
    assert result.returncode != 0 and result.stderr.strip() == sentence_for_newer(path)
    assert path.read_bytes() == content

    old = copy_fixture(tmp_path / "old") / "trainsup.db"
    result = Cli({**env, "TRAINSUP_HOME": str(old.parent)}).run(*command, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == (f"trainsup: {old} was written by an older trainsup; start the daemon"
                                     " (`trainsup daemon` or restart the service) to upgrade it.")


def test_the_real_daemon_upgrades_the_state_dir_and_carries_on(tmp_path: Path, state_env: dict[str, str],
                                                               cli: Cli, daemon: DaemonProcess):
    shutil.copytree(FIXTURE, state_env["TRAINSUP_HOME"])
    db_path = Path(state_env["TRAINSUP_HOME"]) / "trainsup.db"
    before, ids = snapshot(db_path), ids_by_name(db_path)
    jobs_before = {row[0]: row for row in before["jobs"]}

    daemon.start()
    assert len(cli.wait_state(ids["queued"], "succeeded", timeout=60)["attempts"]) == 1
    assert schema.read_version(db_path) == schema.VERSION
    rows = {row["name"]: row for row in cli.json("status")}
    assert {name: row["state"] for name, row in rows.items()} == {
        "batch-oom": "succeeded", "heartbeats": "succeeded", "restarted": "succeeded", "failed": "failed",
        "cancelled": "cancelled", "backoff": "backoff", "held": "held", "queued": "succeeded",
    }
    after = snapshot(db_path)
    queued = ids["queued"]
    for row in after["jobs"]:
        if row[0] != queued:
            assert row == jobs_before[row[0]], f"job {row[1]} changed"
    assert [a for a in after["attempts"] if a[0] != queued] == before["attempts"]
    assert [e for e in after["events"] if e[1] != queued] == [e for e in before["events"] if e[1] != queued]
    new_events = [e for e in after["events"] if e[1] == queued]
    assert new_events[:len([e for e in before["events"] if e[1] == queued])] == [
        e for e in before["events"] if e[1] == queued]
    assert rows["batch-oom"]["batch"] == {"micro": 2, "grad_accum": 4, "global": 8}
    shown = cli.json("show", "restarted")
    assert shown["state"] == "succeeded" and shown["spec"]["name"] == "restarted"
    assert "queued job ran" in cli.run("logs", queued).stdout
    assert daemon.stop() == 0
