"""The SQLite store: WAL readers never block the daemon's writes; transitions are enforced;
the schema is versioned and older databases are upgraded in one transaction."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from trainsup.batch import Batch
from trainsup.errors import DatabaseVersionError, IllegalTransitionError
from trainsup.jobs import schema
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Attempt, HeartbeatCalibration, Job, Store

FIXTURE_DB = Path(__file__).parent / "fixtures" / "state-v1" / "trainsup.db"
SPEC = {"name": "x", "command": ["true"]}


def make_job(job_id: str, state: JobState = JobState.QUEUED, batch: Batch | None = None) -> Job:
    return Job(id=job_id, name=f"job-{job_id}", state=state, state_since=time.time(), submitted_at=time.time(),
               spec_json=json.dumps(SPEC), spec_text="", spec_path="/x.yaml", environment={},
               checkpoint_dir="/tmp/ck", next_start_at=None, stop_requested=None, batch=batch, result=None)


def make_attempt(job_id: str, number: int, run_dir: Path | str = "/tmp/run", batch: Batch | None = None) -> Attempt:
    return Attempt(job_id=job_id, number=number, run_dir=str(run_dir), log_path="/tmp/log", boot_id="b",
                   started_at=time.time(), monitor_pid=None, monitor_started=None, job_pid=None, ended_at=None,
                   exit_code=None, signal=None, reason=None, detail=None, checkpoint_before=None,
                   checkpoint_after=None, batch=batch, peak_gpu_memory=None)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def v1_database(tmp_path: Path) -> Path:
    """A copy of the database the release before schema 2 wrote (tests/fixtures/make_state_v1.py)."""
    path = tmp_path / "trainsup.db"
    shutil.copyfile(FIXTURE_DB, path)
    return path


def test_a_reader_holding_a_snapshot_does_not_block_the_writer(tmp_path: Path):
    writer = Store.open(tmp_path / "db")
    writer.insert_job(make_job("a"))
    reader = Store.open_readonly(tmp_path / "db")
    reader._db.execute("BEGIN")
    assert len(reader.jobs()) == 1  # the reader now holds a read snapshot
    started = time.monotonic()
    with writer.transaction():
        writer.insert_job(make_job("b"))
        writer.set_state("a", JobState.QUEUED, JobState.STARTING, time.time(), "attempt_started", "attempt 1")
    assert time.monotonic() - started < 5, "the write went through while the reader held its snapshot"
    assert {j.id for j in reader.jobs()} == {"a"}, "the reader's snapshot is stable"
    reader._db.execute("COMMIT")
    assert {j.id for j in reader.jobs()} == {"a", "b"}


def test_the_cli_side_cannot_write(tmp_path: Path):
    Store.open(tmp_path / "db").insert_job(make_job("a"))
    reader = Store.open_readonly(tmp_path / "db")
    with pytest.raises(sqlite3.OperationalError):
        reader.insert_job(make_job("b"))


def test_wal_and_full_sync(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_transition_guard_in_the_store(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a"))
    with pytest.raises(IllegalTransitionError):
        store.set_state("a", JobState.QUEUED, JobState.SUCCEEDED, time.time(), "x", "not an edge")
    store.set_state("a", JobState.QUEUED, JobState.STARTING, time.time(), "attempt_started", "attempt 1")
    with pytest.raises(IllegalTransitionError):
        store.set_state("a", JobState.QUEUED, JobState.STARTING, time.time(), "x", "no longer queued")
    assert store.job("a").state is JobState.STARTING
    assert [e.kind for e in store.events("a")] == ["attempt_started"], "a refused change leaves no event"


def test_every_state_change_writes_its_event(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a"))
    with store.transaction():
        store.set_state("a", JobState.QUEUED, JobState.HELD, 100.0, "held", "held on request")
    store.set_state("a", JobState.HELD, JobState.QUEUED, 101.0, "released", "released on request")
    assert [(e.at, e.kind, e.message) for e in store.events("a")] == [
        (100.0, "held", "held on request"), (101.0, "released", "released on request")]


def test_a_failed_transaction_leaves_nothing(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_job(make_job("a"))
            store.add_event("a", "submitted", "x")
            raise RuntimeError("crash mid-transaction")
    assert store.jobs() == [] and store.events("a") == []


def test_reingesting_a_submission_is_a_no_op(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    assert store.insert_job(make_job("a"))
    assert not store.insert_job(make_job("a"))
    assert store.mark_ingested("req-1", time.time())
    assert not store.mark_ingested("req-1", time.time())


# --- typed fields ---------------------------------------------------------------------


def test_batches_round_trip_as_batch_values(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a", batch=Batch(8, 2)))
    assert store.job("a").batch == Batch(8, 2)
    store.update_job("a", batch=Batch(4, 4))
    assert store.job("a").batch == Batch(4, 4)
    store.set_state("a", JobState.QUEUED, JobState.STARTING, 1.0, "attempt_started", "x", batch=Batch(2, 8))
    assert store.job("a").batch == Batch(2, 8)
    store.insert_attempt(make_attempt("a", 1, batch=Batch(2, 8)))
    store.insert_attempt(make_attempt("a", 2))
    store.update_attempt("a", 2, batch=Batch(1, 16))
    assert [a.batch for a in store.attempts("a")] == [Batch(2, 8), Batch(1, 16)]
    stored = store._db.execute("SELECT batch_json FROM jobs WHERE id='a'").fetchone()[0]
    assert json.loads(stored) == {"micro": 2, "grad_accum": 8, "global": 16}
    store.update_job("a", batch=None)
    assert store.job("a").batch is None


def test_the_spec_is_parsed_on_first_use(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a"))
    job = store.job("a")
    assert json.loads(job.spec_json) == SPEC
    assert job.spec.command == ["true"] and job.spec.restart.max_restarts == 5
    assert job.spec is job.spec, "parsed once"


def test_remembered_micro_batches_by_name_and_global_batch(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    assert store.remembered_micro("train", 64) is None
    store.remember_micro("train", 64, 16)
    store.remember_micro("train", 64, 8)
    store.remember_micro("train", 128, 32)
    assert store.remembered_micro("train", 64) == 8
    assert store.remembered_micro("train", 128) == 32
    assert store.remembered_micro("other", 64) is None


def test_heartbeat_calibration_per_job(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a"))
    assert store.heartbeat_calibration("a") is None
    store.save_heartbeat_calibration("a", HeartbeatCalibration(gaps=3, longest_gap=1.5, ever_beat=True))
    store.save_heartbeat_calibration("a", HeartbeatCalibration(gaps=4, longest_gap=2.5, ever_beat=True))
    assert store.heartbeat_calibration("a") == HeartbeatCalibration(4, 2.5, True)
    with pytest.raises(sqlite3.IntegrityError):
        store.save_heartbeat_calibration("nobody", HeartbeatCalibration(0, 0.0, False))


def test_budget_reset_and_hang_verdict(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a", JobState.FAILED))
    assert store.job("a").budget_reset_at is None
    store.set_state("a", JobState.FAILED, JobState.QUEUED, 50.0, "restarted", "queued again", budget_reset_at=50.0)
    assert store.job("a").budget_reset_at == 50.0
    store.insert_attempt(make_attempt("a", 1))
    assert store.attempts("a")[0].hang_verdict is None
    store.update_attempt("a", 1, hang_verdict="no heartbeat for 90 s during train, past the fixed timeout of 60 s.")
    assert store.attempts("a")[0].hang_verdict.startswith("no heartbeat for 90 s")


def test_update_job_refuses_the_state(tmp_path: Path):
    store = Store.open(tmp_path / "db")
    store.insert_job(make_job("a"))
    with pytest.raises(TypeError):
        store.update_job("a", state=JobState.HELD)


# --- versions and upgrades ------------------------------------------------------------------


def test_a_new_database_is_created_at_the_latest_version(tmp_path: Path):
    Store.open(tmp_path / "db").close()
    db = raw(tmp_path / "db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"micro_batches", "heartbeat_calibrations"} <= tables and "memory" not in tables
    Store.open(tmp_path / "db").close()  # opening again changes nothing
    assert not list(tmp_path.glob("*.bak"))


def test_each_kind_of_memory_row_is_migrated(tmp_path: Path):
    path = v1_database(tmp_path)
    db = raw(path)
    ids = dict(db.execute("SELECT name, id FROM jobs").fetchall())
    db.executemany("INSERT OR REPLACE INTO memory (name, value_json) VALUES (?, ?)", [
        ("batch:my.job-1:96", "24"),
        (f"hang:{ids['failed']}", json.dumps({"attempt_started_at": 1.0, "last_beat": 2.0, "last_phase": "train",
                                              "beats": 9, "gaps": 7, "longest_gap": 3.25, "ever_beat": True})),
        ("hang:gone", json.dumps({"gaps": 1, "longest_gap": 1.0, "ever_beat": True})),  # no such job
        (f"budget_reset:{ids['failed']}", "1234.5"),
    ])
    db.close()
    store = Store.open(path)
    assert store.remembered_micro("my.job-1", 96) == 24
    assert store.remembered_micro("batch-oom", 8) == 2  # what the old daemon wrote
    assert store.heartbeat_calibration(ids["failed"]) == HeartbeatCalibration(7, 3.25, True)
    assert store.heartbeat_calibration(ids["heartbeats"]).ever_beat  # what the old daemon wrote
    assert store.heartbeat_calibration("gone") is None
    assert store.job(ids["failed"]).budget_reset_at == 1234.5
    assert store.job(ids["restarted"]).budget_reset_at is not None  # what the old daemon wrote
    assert store.job(ids["queued"]).budget_reset_at is None
    tables = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "memory" not in tables


def test_old_batch_keys_are_rewritten(tmp_path: Path):
    path = v1_database(tmp_path)
    store = Store.open(path)
    job = next(j for j in store.jobs() if j.name == "batch-oom")
    assert job.batch == Batch(2, 4)
    assert [a.batch for a in store.attempts(job.id)] == [Batch(4, 2), Batch(2, 4)]
    stored = [json.loads(r[0]) for r in store._db.execute("SELECT batch_json FROM attempts WHERE batch_json IS NOT NULL")]
    assert stored and all(set(b) == {"micro", "grad_accum", "global"} for b in stored)


def test_a_live_attempt_gets_the_verdict_of_its_hang_file(tmp_path: Path):
    path = v1_database(tmp_path)
    db = raw(path)
    job_id = db.execute("SELECT id FROM jobs WHERE name='queued'").fetchone()[0]
    for number, ended_at in ((1, 10.0), (2, None), (3, None)):
        run_dir = tmp_path / f"attempt-{number}.run"
        run_dir.mkdir()
        if number < 3:
            (run_dir / "hang.json").write_text(json.dumps({"verdict": f"hung {number}", "timeout": "fixed"}))
        db.execute("INSERT INTO attempts (job_id, number, run_dir, log_path, boot_id, started_at, ended_at)"
                   " VALUES (?,?,?,?,?,?,?)", (job_id, number, str(run_dir), "/tmp/log", "b", 1.0, ended_at))
    db.close()
    store = Store.open(path)
    assert [a.hang_verdict for a in store.attempts(job_id)] == [None, "hung 2", None]


def test_a_failed_migration_leaves_version_1_and_the_next_open_migrates(tmp_path: Path, monkeypatch):
    path = v1_database(tmp_path)
    before = raw(path).iterdump()
    before = list(before)

    def half_then_crash(db: sqlite3.Connection) -> None:
        schema._1_to_2(db)
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema, "MIGRATIONS", [half_then_crash])
    with pytest.raises(RuntimeError, match="power cut"):
        Store.open(path)
    assert schema.read_version(path) == 1
    assert list(raw(path).iterdump()) == before, "the rolled back migration left no trace"
    assert schema.backup_path(path, 1).exists(), "the copy stays until a migration commits"

    monkeypatch.undo()
    store = Store.open(path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    assert store.remembered_micro("batch-oom", 8) == 2
    assert not schema.backup_path(path, 1).exists()


def test_the_old_file_is_copied_before_the_migration(tmp_path: Path, monkeypatch):
    path = v1_database(tmp_path)
    seen = []

    def look(db: sqlite3.Connection) -> None:
        copy = raw(schema.backup_path(path, 1))
        seen.append(copy.execute("SELECT COUNT(*) FROM memory").fetchone()[0])
        copy.close()
        schema._1_to_2(db)

    monkeypatch.setattr(schema, "MIGRATIONS", [look])
    Store.open(path)
    assert seen and seen[0] > 0
    assert not schema.backup_path(path, 1).exists()


def newer_database(path: Path, version: int = 99) -> bytes:
    db = raw(path)
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, future TEXT)")
    db.execute(f"PRAGMA user_version={version}")
    db.close()
    return path.read_bytes()


def test_a_newer_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "trainsup.db"
    content = newer_database(path)
    with pytest.raises(DatabaseVersionError) as refused:
        Store.open(path)
    message = str(refused.value)
    assert message == (f"{path} was written by a newer trainsup (schema version 99; this one reads up to"
                       f" {schema.VERSION}): upgrade trainsup or use another TRAINSUP_HOME.")
    with pytest.raises(DatabaseVersionError, match="newer trainsup"):
        Store.open_readonly(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainsup.db"]


def test_the_cli_side_asks_for_the_daemon_to_upgrade(tmp_path: Path):
    path = v1_database(tmp_path)
    content = path.read_bytes()
    with pytest.raises(DatabaseVersionError) as refused:
        Store.open_readonly(path)
    assert str(refused.value) == (f"{path} was written by an older trainsup; start the daemon (`trainsup daemon`"
                                  " or restart the service) to upgrade it.")
    assert path.read_bytes() == content
    Store.open(path).close()
    assert len(Store.open_readonly(path).jobs()) == 8
