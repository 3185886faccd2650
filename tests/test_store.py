"""The SQLite store: WAL readers never block the daemon's writes; transitions are enforced."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from trainsup.errors import IllegalTransitionError
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Job, Store


def make_job(job_id: str, state: JobState = JobState.QUEUED) -> Job:
    return Job(id=job_id, name=f"job-{job_id}", state=state, state_since=time.time(), submitted_at=time.time(),
               spec={"command": ["true"]}, spec_text="", spec_path="/x.yaml", environment={},
               checkpoint_dir="/tmp/ck", next_start_at=None, stop_requested=None, batch=None, result=None)


def test_a_reader_holding_a_snapshot_does_not_block_the_writer(tmp_path: Path):
    writer = Store.open(tmp_path / "db")
    writer.insert_job(make_job("a"))
    reader = Store.open_readonly(tmp_path / "db")
    reader._db.execute("BEGIN")
    assert len(reader.jobs()) == 1  # the reader now holds a read snapshot
    started = time.monotonic()
    with writer.transaction():
        writer.insert_job(make_job("b"))
        writer.set_state("a", JobState.QUEUED, JobState.STARTING, time.time())
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
        store.set_state("a", JobState.QUEUED, JobState.SUCCEEDED, time.time())  # not an edge
    store.set_state("a", JobState.QUEUED, JobState.STARTING, time.time())
    with pytest.raises(IllegalTransitionError):
        store.set_state("a", JobState.QUEUED, JobState.STARTING, time.time())  # no longer queued
    assert store.job("a").state is JobState.STARTING


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
