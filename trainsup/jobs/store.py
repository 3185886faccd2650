"""The SQLite store of jobs, attempts and events.

The daemon is the only writer; it creates or upgrades the schema when it opens the
store (see `trainsup.jobs.schema`). The CLI opens the database read-only; WAL mode
means its reads never block the daemon. Stdlib only (the job's typed spec is parsed
on first use), so `trainsup status` stays fast.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainsup.batch import Batch
from trainsup.errors import DatabaseVersionError, IllegalTransitionError
from trainsup.jobs import schema
from trainsup.jobs.states import EndReason, JobState, check_transition

if TYPE_CHECKING:
    from trainsup.jobs.spec import JobSpec

@dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: JobState
    state_since: float
    submitted_at: float
    spec_json: str
    spec_text: str
    spec_path: str
    environment: dict[str, str]
    checkpoint_dir: str
    next_start_at: float | None
    stop_requested: str | None
    batch: Batch | None
    result: str | None
    budget_reset_at: float | None = None  # when `trainsup restart` last gave it a fresh restart budget

    @cached_property
    def spec(self) -> JobSpec:
        """The typed spec, parsed on first use (pydantic is imported only then)."""
        from trainsup.jobs.spec import JobSpec

        # Without the input checks added since it was queued: a stored job always loads.
        return JobSpec.from_stored(self.spec_json)


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
    batch: Batch | None
    peak_gpu_memory: int | None
    gpu_uuids: list[str] | None = None
    hang_verdict: str | None = None  # why the daemon killed it as hung, in one sentence
    newest_write_before: float | None = None  # the newest file time under the checkpoint dir at its start
    newest_write_after: float | None = None  # ... and at its end: larger means it made progress

    @property
    def is_live(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Event:
    job_id: str
    at: float
    kind: str
    message: str


@dataclass(frozen=True)
class HeartbeatCalibration:
    """What a job's heartbeats taught across its attempts: how many steady intervals, the longest."""

    gaps: int
    longest_gap: float
    ever_beat: bool


def _batch(batch_json: str | None) -> Batch | None:
    return Batch.from_dict(json.loads(batch_json)) if batch_json else None


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], name=row["name"], state=JobState(row["state"]),
        state_since=row["state_since"], submitted_at=row["submitted_at"],
        spec_json=row["spec_json"], spec_text=row["spec_text"],
        spec_path=row["spec_path"], environment=json.loads(row["environment_json"]),
        checkpoint_dir=row["checkpoint_dir"], next_start_at=row["next_start_at"],
        stop_requested=row["stop_requested"], batch=_batch(row["batch_json"]),
        result=row["result"], budget_reset_at=row["budget_reset_at"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    fields = dict(row)
    fields["reason"] = EndReason(row["reason"]) if row["reason"] else None
    fields["batch"] = _batch(fields.pop("batch_json"))
    fields["gpu_uuids"] = json.loads(row["gpu_uuids"]) if row["gpu_uuids"] else None
    return Attempt(**fields)


class Store:
    """Jobs, attempts and events in one SQLite file."""

    def __init__(self, connection: sqlite3.Connection):
        self._db = connection

    @classmethod
    def open(cls, path: Path) -> "Store":
        """Open for writing (the daemon): create the schema, or upgrade an older one.

        Raises:
            DatabaseVersionError: a newer trainsup wrote the database; it is left untouched.
        """
        version = schema.read_version(path)
        if version > schema.VERSION:
            raise DatabaseVersionError(_newer_message(path, version))
        _make_private(path)
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        store = cls(db)
        if version == 0:
            with store.transaction():
                if schema.version_of(db) == 0:
                    schema.create(db)
        elif version < schema.VERSION:
            schema.upgrade(db, path, version)
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> "Store | None":
        """Open for reading (the CLI); None if no daemon has created the store yet.

        Raises:
            DatabaseVersionError: the schema is not this trainsup's (older: the daemon upgrades it).
        """
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        version = schema.version_of(db)
        if version == schema.VERSION:
            return cls(db)
        db.close()
        if version == 0:
            return None
        if version > schema.VERSION:
            raise DatabaseVersionError(_newer_message(path, version))
        raise DatabaseVersionError(
            f"{path} was written by an older trainsup; start the daemon (`trainsup daemon` or restart the service)"
            " to upgrade it."
        )

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
            self._db.execute("COMMIT")
        except BaseException:
            # After SQLITE_FULL the transaction may already be rolled back (or the COMMIT
            # itself failed): roll back what is left without hiding the error.
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    # --- jobs -----------------------------------------------------------------

    def insert_job(self, job: Job) -> bool:
        """Add a job; False if a job with this id exists (a re-ingested request)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO jobs (id, name, state, state_since, submitted_at, spec_json,"
            " spec_text, spec_path, environment_json, checkpoint_dir, batch_json, budget_reset_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, job.name, job.state, job.state_since, job.submitted_at,
             job.spec_json, job.spec_text, job.spec_path, json.dumps(job.environment),
             job.checkpoint_dir, _column_value(job.batch), job.budget_reset_at),
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
            " a.checkpoint_after, j.checkpoint_dir,"
            " CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN NULL ELSE j.spec_json END AS live_spec_json"
            " FROM jobs j LEFT JOIN attempts a ON a.job_id=j.id AND a.number ="
            " (SELECT MAX(number) FROM attempts WHERE job_id=j.id)"
            " ORDER BY j.submitted_at, j.id"
        ).fetchall()

    def sweep_members(self, sweep: str) -> list[sqlite3.Row]:
        """Every job of the sweep named `sweep`, oldest first, with its combination (`status --sweep`)."""
        return self._db.execute(
            "SELECT j.id, j.name, j.state, j.state_since, j.submitted_at, j.result,"
            " json_extract(j.spec_json, '$.sweep.values') AS sweep_values,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.job_id=j.id) AS attempts,"
            " (SELECT a.reason FROM attempts a WHERE a.job_id=j.id ORDER BY a.number DESC LIMIT 1) AS last_reason"
            " FROM jobs j WHERE json_extract(j.spec_json, '$.sweep.name')=? ORDER BY j.submitted_at, j.id",
            (sweep,),
        ).fetchall()

    def sweep_names(self) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT json_extract(spec_json, '$.sweep.name') AS sweep FROM jobs WHERE sweep IS NOT NULL"
        ).fetchall()
        return sorted(row["sweep"] for row in rows)

    def delete_job(self, job_id: str) -> bool:
        """Delete a finished job with its attempts, events and heartbeat calibration; False if it is not finished.

        The daemon calls it inside the transaction that applies a `remove` request.
        """
        row = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None or not JobState(row["state"]).is_terminal:
            return False
        for table in ("events", "attempts", "heartbeat_calibrations"):
            self._db.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))
        return self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount == 1

    def waiting_on(self, job_id: str) -> list[str]:
        """Unfinished jobs that list `job_id` in their `after`."""
        rows = self._db.execute(
            "SELECT j.id FROM jobs j WHERE j.state NOT IN ('succeeded', 'failed', 'cancelled') AND EXISTS"
            " (SELECT 1 FROM json_each(j.spec_json, '$.after') WHERE value=?)", (job_id,)
        ).fetchall()
        return [row["id"] for row in rows]

    def jobs_using_checkpoint_dir(self, path: str) -> list[str]:
        """Jobs whose checkpoint dir is `path`."""
        return [row["id"] for row in self._db.execute("SELECT id FROM jobs WHERE checkpoint_dir=?", (path,))]

    def set_state(
        self, job_id: str, current: JobState, target: JobState, now: float, kind: str, message: str,
        **fields: Any,
    ) -> None:
        """Move a job along one legal edge of the state machine and record the event that says why.

        `fields` are other columns of the job to change with it (`batch` takes a `Batch`).

        Raises:
            IllegalTransitionError: the edge is not in the table, or the job is
                no longer in `current` (someone else moved it).
        """
        check_transition(current, target)
        assignments = "".join(f", {_column(name)}=?" for name in fields)
        values = [_column_value(v) for v in fields.values()]
        with self.transaction():
            cursor = self._db.execute(
                f"UPDATE jobs SET state=?, state_since=?{assignments} WHERE id=? AND state=?",
                (target, now, *values, job_id, current),
            )
            if cursor.rowcount != 1:
                raise IllegalTransitionError(f"job {job_id} is no longer {current}")
            self.add_event(job_id, kind, message, now)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change fields other than the state (`batch` takes a `Batch`)."""
        if "state" in fields:
            raise TypeError("change a job's state with set_state, which checks the edge and records the event")
        assignments = ", ".join(f"{_column(name)}=?" for name in fields)
        self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id=?",
            (*[_column_value(v) for v in fields.values()], job_id),
        )

    # --- attempts ---------------------------------------------------------------

    def insert_attempt(self, attempt: Attempt) -> None:
        self._db.execute(
            "INSERT INTO attempts (job_id, number, run_dir, log_path, boot_id, started_at,"
            " checkpoint_before, batch_json, gpu_uuids, newest_write_before) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (attempt.job_id, attempt.number, attempt.run_dir, attempt.log_path, attempt.boot_id,
             attempt.started_at, attempt.checkpoint_before, _column_value(attempt.batch),
             json.dumps(attempt.gpu_uuids) if attempt.gpu_uuids else None, attempt.newest_write_before),
        )

    def update_attempt(self, job_id: str, number: int, **fields: Any) -> None:
        """Change columns of one attempt (`batch` takes a `Batch`)."""
        assignments = ", ".join(f"{_column(name)}=?" for name in fields)
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

    # --- what the daemon learnt -------------------------------------------------------

    def remembered_micro(self, job_name: str, global_batch: int) -> int | None:
        """The micro-batch that last worked for jobs of this name at this global batch."""
        row = self._db.execute(
            "SELECT micro FROM micro_batches WHERE job_name=? AND global_batch=?", (job_name, global_batch)
        ).fetchone()
        return row["micro"] if row else None

    def remember_micro(self, job_name: str, global_batch: int, micro: int) -> None:
        self._db.execute(
            "INSERT INTO micro_batches (job_name, global_batch, micro) VALUES (?,?,?)"
            " ON CONFLICT(job_name, global_batch) DO UPDATE SET micro=excluded.micro",
            (job_name, global_batch, micro),
        )

    def heartbeat_calibration(self, job_id: str) -> HeartbeatCalibration | None:
        row = self._db.execute(
            "SELECT gaps, longest_gap, ever_beat FROM heartbeat_calibrations WHERE job_id=?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        return HeartbeatCalibration(gaps=row["gaps"], longest_gap=row["longest_gap"], ever_beat=bool(row["ever_beat"]))

    def save_heartbeat_calibration(self, job_id: str, calibration: HeartbeatCalibration) -> None:
        self._db.execute(
            "INSERT INTO heartbeat_calibrations (job_id, gaps, longest_gap, ever_beat) VALUES (?,?,?,?)"
            " ON CONFLICT(job_id) DO UPDATE SET gaps=excluded.gaps, longest_gap=excluded.longest_gap,"
            " ever_beat=excluded.ever_beat",
            (job_id, calibration.gaps, calibration.longest_gap, int(calibration.ever_beat)),
        )


def _make_private(path: Path) -> None:
    """The database file at 0600 (created so if new): SQLite gives its -wal and -shm the same mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            os.chmod(file, 0o600)
        except FileNotFoundError:
            pass


def _newer_message(path: Path, version: int) -> str:
    return (f"{path} was written by a newer trainsup (schema version {version}; this one reads up to"
            f" {schema.VERSION}): upgrade trainsup or use another TRAINSUP_HOME.")


_COLUMNS = {"batch": "batch_json"}


def _column(field: str) -> str:
    return _COLUMNS.get(field, field)


def _column_value(value: Any) -> Any:
    if isinstance(value, Batch):
        return json.dumps(value.as_dict())
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
