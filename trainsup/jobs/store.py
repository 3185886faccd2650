"""The SQLite store of jobs, attempts and events.

The daemon is the only writer. The CLI opens the database read-only; WAL mode
means its reads never block the daemon. Stdlib only, so `trainsup status`
stays fast.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainsup.jobs.states import EndReason, JobState, check_transition
from trainsup.errors import IllegalTransitionError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_since     REAL NOT NULL,
    submitted_at    REAL NOT NULL,
    spec_json       TEXT NOT NULL,
    spec_text       TEXT NOT NULL,
    spec_path       TEXT NOT NULL,
    environment_json TEXT NOT NULL,
    checkpoint_dir  TEXT NOT NULL,
    next_start_at   REAL,
    stop_requested  TEXT,
    batch_json      TEXT,
    result          TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs(name);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id          TEXT NOT NULL REFERENCES jobs(id),
    number          INTEGER NOT NULL,
    run_dir         TEXT NOT NULL,
    log_path        TEXT NOT NULL,
    boot_id         TEXT NOT NULL,
    started_at      REAL NOT NULL,
    monitor_pid     INTEGER,
    monitor_started REAL,
    job_pid         INTEGER,
    ended_at        REAL,
    exit_code       INTEGER,
    signal          INTEGER,
    reason          TEXT,
    detail          TEXT,
    checkpoint_before TEXT,
    checkpoint_after  TEXT,
    batch_json      TEXT,
    peak_gpu_memory INTEGER,
    gpu_uuids       TEXT,
    PRIMARY KEY (job_id, number)
);
CREATE INDEX IF NOT EXISTS live_attempts ON attempts(ended_at) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS ingested (
    request TEXT PRIMARY KEY,
    at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS memory (
    name    TEXT PRIMARY KEY,
    value_json TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: JobState
    state_since: float
    submitted_at: float
    spec: dict[str, Any]
    spec_text: str
    spec_path: str
    environment: dict[str, str]
    checkpoint_dir: str
    next_start_at: float | None
    stop_requested: str | None
    batch: dict[str, int] | None
    result: str | None


@dataclass(frozen=True)
class Attempt:
    job_id: str
    number: int
    run_dir: str
    log_path: str
    boot_id: str
    started_at: float
    monitor_pid: int | None
    monitor_started: float | None
    job_pid: int | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    reason: EndReason | None
    detail: str | None
    checkpoint_before: str | None
    checkpoint_after: str | None
    batch: dict[str, int] | None
    peak_gpu_memory: int | None
    gpu_uuids: list[str] | None = None

    @property
    def is_live(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Event:
    job_id: str
    at: float
    kind: str
    message: str


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], name=row["name"], state=JobState(row["state"]),
        state_since=row["state_since"], submitted_at=row["submitted_at"],
        spec=json.loads(row["spec_json"]), spec_text=row["spec_text"],
        spec_path=row["spec_path"], environment=json.loads(row["environment_json"]),
        checkpoint_dir=row["checkpoint_dir"], next_start_at=row["next_start_at"],
        stop_requested=row["stop_requested"],
        batch=json.loads(row["batch_json"]) if row["batch_json"] else None,
        result=row["result"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    fields = dict(row)
    fields["reason"] = EndReason(row["reason"]) if row["reason"] else None
    batch_json = fields.pop("batch_json")
    fields["batch"] = json.loads(batch_json) if batch_json else None
    fields["gpu_uuids"] = json.loads(row["gpu_uuids"]) if row["gpu_uuids"] else None
    return Attempt(**fields)


class Store:
    """Jobs, attempts and events in one SQLite file."""

    def __init__(self, connection: sqlite3.Connection):
        self._db = connection

    @classmethod
    def open(cls, path: Path) -> "Store":
        """Open for writing (the daemon), creating the schema if needed."""
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        return cls(db)

    @classmethod
    def open_readonly(cls, path: Path) -> "Store | None":
        """Open for reading (the CLI); None if no daemon has created the store yet."""
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        return cls(db)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable unit of change; nested calls join the outer one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- jobs -----------------------------------------------------------------

    def insert_job(self, job: Job) -> bool:
        """Add a job; False if a job with this id exists (a re-ingested request)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO jobs (id, name, state, state_since, submitted_at, spec_json,"
            " spec_text, spec_path, environment_json, checkpoint_dir, batch_json)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, job.name, job.state, job.state_since, job.submitted_at,
             json.dumps(job.spec), job.spec_text, job.spec_path, json.dumps(job.environment),
             job.checkpoint_dir, json.dumps(job.batch) if job.batch else None),
        )
        return cursor.rowcount == 1

    def job(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, states: set[JobState] | None = None) -> list[Job]:
        """Jobs in submission order, only those in `states` if given (filtered by the index)."""
        if states is None:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY submitted_at, id").fetchall()
        else:
            marks = ",".join("?" * len(states))
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY submitted_at, id", [str(s) for s in states]
            ).fetchall()
        return [_job(row) for row in rows]

    def jobs_named(self, name: str) -> list[Job]:
        rows = self._db.execute("SELECT * FROM jobs WHERE name=? ORDER BY submitted_at, id", (name,)).fetchall()
        return [_job(row) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {row["state"]: row["n"] for row in rows}

    def job_summaries(self) -> list[sqlite3.Row]:
        """The columns `trainsup status` shows, for every job, in one query."""
        return self._db.execute(
            "SELECT j.id, j.name, j.state, j.state_since, j.submitted_at, j.result,"
            " j.batch_json, j.next_start_at,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.job_id=j.id) AS attempts,"
            " a.job_pid, a.started_at AS attempt_started, a.ended_at AS attempt_ended,"
            " a.reason AS last_reason, a.peak_gpu_memory, a.run_dir, a.checkpoint_before,"
            " a.checkpoint_after, j.checkpoint_dir"
            " FROM jobs j LEFT JOIN attempts a ON a.job_id=j.id AND a.number ="
            " (SELECT MAX(number) FROM attempts WHERE job_id=j.id)"
            " ORDER BY j.submitted_at, j.id"
        ).fetchall()

    def set_state(self, job_id: str, current: JobState, target: JobState, now: float, **fields: Any) -> None:
        """Move a job along one legal edge of the state machine.

        Raises:
            IllegalTransitionError: the edge is not in the table, or the job is
                no longer in `current` (someone else moved it).
        """
        check_transition(current, target)
        assignments = "".join(f", {name}=?" for name in fields)
        values = [_column_value(v) for v in fields.values()]
        cursor = self._db.execute(
            f"UPDATE jobs SET state=?, state_since=?{assignments} WHERE id=? AND state=?",
            (target, now, *values, job_id, current),
        )
        if cursor.rowcount != 1:
            raise IllegalTransitionError(f"job {job_id} is no longer {current}")

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change fields other than the state."""
        assert "state" not in fields, "use set_state"
        assignments = ", ".join(f"{name}=?" for name in fields)
        self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id=?",
            (*[_column_value(v) for v in fields.values()], job_id),
        )

    # --- attempts ---------------------------------------------------------------

    def insert_attempt(self, attempt: Attempt) -> None:
        self._db.execute(
            "INSERT INTO attempts (job_id, number, run_dir, log_path, boot_id, started_at,"
            " checkpoint_before, batch_json, gpu_uuids) VALUES (?,?,?,?,?,?,?,?,?)",
            (attempt.job_id, attempt.number, attempt.run_dir, attempt.log_path, attempt.boot_id,
             attempt.started_at, attempt.checkpoint_before,
             json.dumps(attempt.batch) if attempt.batch else None,
             json.dumps(attempt.gpu_uuids) if attempt.gpu_uuids else None),
        )

    def update_attempt(self, job_id: str, number: int, **fields: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in fields)
        self._db.execute(
            f"UPDATE attempts SET {assignments} WHERE job_id=? AND number=?",
            (*[_column_value(v) for v in fields.values()], job_id, number),
        )

    def attempts(self, job_id: str) -> list[Attempt]:
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE job_id=? ORDER BY number", (job_id,)
        ).fetchall()
        return [_attempt(row) for row in rows]

    def live_attempts(self) -> list[Attempt]:
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE ended_at IS NULL ORDER BY job_id, number"
        ).fetchall()
        return [_attempt(row) for row in rows]

    # --- events -----------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, message: str, at: float | None = None) -> None:
        self._db.execute(
            "INSERT INTO events (job_id, at, kind, message) VALUES (?,?,?,?)",
            (job_id, time.time() if at is None else at, kind, message),
        )

    def events(self, job_id: str) -> list[Event]:
        rows = self._db.execute(
            "SELECT job_id, at, kind, message FROM events WHERE job_id=? ORDER BY id", (job_id,)
        ).fetchall()
        return [Event(**dict(row)) for row in rows]

    # --- inbox requests already applied (so a re-read request is never applied twice)

    def mark_ingested(self, request_name: str, now: float) -> bool:
        """Record a request as applied; False if it already was."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO ingested (request, at) VALUES (?, ?)", (request_name, now)
        )
        return cursor.rowcount == 1

    # --- small persistent memory (e.g. batch sizes that worked, per job name) ----

    def remember(self, name: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO memory (name, value_json) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value_json=excluded.value_json",
            (name, json.dumps(value)),
        )

    def recall(self, name: str) -> Any | None:
        row = self._db.execute("SELECT value_json FROM memory WHERE name=?", (name,)).fetchone()
        return json.loads(row["value_json"]) if row else None


def _column_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
