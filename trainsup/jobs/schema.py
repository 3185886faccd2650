"""The database schema, its version (`PRAGMA user_version`) and the steps from older versions.

Version 1 is the schema before versions were kept (`user_version` 0 with tables in it).
A new database is created at `VERSION` directly; an older one is brought forward by
`MIGRATIONS`, one function per step, all of them in one transaction. Stdlib only.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from trainsup.batch import Batch
from trainsup.durable import fsync_dir

VERSION = 3

SCHEMA = """
CREATE TABLE jobs (
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
    result          TEXT,
    budget_reset_at REAL
);
CREATE INDEX jobs_by_name ON jobs(name);
CREATE INDEX jobs_by_state ON jobs(state);
CREATE TABLE attempts (
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
    hang_verdict    TEXT,
    newest_write_before REAL,
    newest_write_after  REAL,
    PRIMARY KEY (job_id, number)
);
CREATE INDEX live_attempts ON attempts(ended_at) WHERE ended_at IS NULL;
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, id);
CREATE TABLE ingested (
    request TEXT PRIMARY KEY,
    at      REAL NOT NULL
);
CREATE TABLE micro_batches (
    job_name     TEXT NOT NULL,
    global_batch INTEGER NOT NULL,
    micro        INTEGER NOT NULL,
    PRIMARY KEY (job_name, global_batch)
);
CREATE TABLE heartbeat_calibrations (
    job_id      TEXT PRIMARY KEY REFERENCES jobs(id),
    gaps        INTEGER NOT NULL,
    longest_gap REAL NOT NULL,
    ever_beat   INTEGER NOT NULL
);
"""


def version_of(db: sqlite3.Connection) -> int:
    """The schema version of an open database; 0 for one with no tables yet."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone():
        return 1
    return version


def read_version(path: Path) -> int:
    """The schema version of the database at `path`; 0 if it is new.

    Read without changing anything: with no WAL beside it the file holds every commit,
    so it is read as immutable, which creates no `-wal`/`-shm` files and takes no locks.
    """
    if not path.exists() or path.stat().st_size == 0:
        return 0
    wal = path.with_name(path.name + "-wal")
    immutable = "&immutable=1" if not wal.exists() or wal.stat().st_size == 0 else ""
    db = sqlite3.connect(f"file:{path}?mode=ro{immutable}", uri=True, timeout=30)
    try:
        return version_of(db)
    finally:
        db.close()


def create(db: sqlite3.Connection) -> None:
    """Create the latest schema in an empty database (inside the caller's transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA user_version={VERSION}")


# --- the steps ---------------------------------------------------------------------


def _1_to_2(db: sqlite3.Connection) -> None:
    """The `memory` table's three kinds of row become tables and columns; batches use `Batch.as_dict`."""
    db.execute("ALTER TABLE jobs ADD COLUMN budget_reset_at REAL")
    db.execute("ALTER TABLE attempts ADD COLUMN hang_verdict TEXT")
    db.execute("CREATE TABLE micro_batches (job_name TEXT NOT NULL, global_batch INTEGER NOT NULL,"
               " micro INTEGER NOT NULL, PRIMARY KEY (job_name, global_batch))")
    db.execute("CREATE TABLE heartbeat_calibrations (job_id TEXT PRIMARY KEY REFERENCES jobs(id),"
               " gaps INTEGER NOT NULL, longest_gap REAL NOT NULL, ever_beat INTEGER NOT NULL)")
    known_jobs = {row[0] for row in db.execute("SELECT id FROM jobs")}
    for name, value_json in db.execute("SELECT name, value_json FROM memory").fetchall():
        kind, _, key = name.partition(":")
        value = json.loads(value_json)
        if kind == "batch":
            job_name, _, global_batch = key.rpartition(":")
            db.execute("INSERT OR REPLACE INTO micro_batches (job_name, global_batch, micro) VALUES (?,?,?)",
                       (job_name, int(global_batch), int(value)))
        elif kind == "hang" and key in known_jobs:
            db.execute("INSERT OR REPLACE INTO heartbeat_calibrations (job_id, gaps, longest_gap, ever_beat)"
                       " VALUES (?,?,?,?)", (key, int(value.get("gaps", 0)), float(value.get("longest_gap", 0.0)),
                                             int(bool(value.get("ever_beat", False)))))
        elif kind == "budget_reset":
            db.execute("UPDATE jobs SET budget_reset_at=? WHERE id=?", (float(value), key))
    db.execute("DROP TABLE memory")
    for table, key_columns in (("jobs", "id"), ("attempts", "job_id, number")):
        rows = db.execute(f"SELECT {key_columns}, batch_json FROM {table} WHERE batch_json IS NOT NULL").fetchall()
        for *key, batch_json in rows:
            batch = Batch.from_dict(json.loads(batch_json))
            where = " AND ".join(f"{column.strip()}=?" for column in key_columns.split(","))
            db.execute(f"UPDATE {table} SET batch_json=? WHERE {where}", (json.dumps(batch.as_dict()), *key))
    live = db.execute("SELECT job_id, number, run_dir FROM attempts WHERE ended_at IS NULL").fetchall()
    for job_id, number, run_dir in live:
        verdict = _hang_verdict(Path(run_dir) / "hang.json")
        if verdict is not None:
            db.execute("UPDATE attempts SET hang_verdict=? WHERE job_id=? AND number=?", (verdict, job_id, number))


def _hang_verdict(path: Path) -> str | None:
    try:
        verdict = json.loads(path.read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        return None
    return verdict if isinstance(verdict, str) else None


def _2_to_3(db: sqlite3.Connection) -> None:
    """Progress is any new or changed file under the checkpoint dir: each attempt records
    the newest file time there at its start and end. Older attempts have none (NULL) and
    are judged by their checkpoint names as before."""
    db.execute("ALTER TABLE attempts ADD COLUMN newest_write_before REAL")
    db.execute("ALTER TABLE attempts ADD COLUMN newest_write_after REAL")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_1_to_2, _2_to_3]
"""`MIGRATIONS[n - 1]` brings a database from version n to n + 1."""


# --- running them ------------------------------------------------------------------


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.schema-{version}.bak")


def upgrade(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring the database at `path` (open as `db`, autocommit) from `version` to `VERSION`.

    A copy of the old file is kept next to it until the new version is committed. The
    steps run in one transaction: if one fails or the process dies, the database is
    still at `version` and the next open tries again.
    """
    backup = backup_path(path, version)
    _copy(db, backup)
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in MIGRATIONS[version_of(db) - 1:]:
            step(db)
        db.execute(f"PRAGMA user_version={VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    backup.unlink()
    fsync_dir(path.parent)


def _copy(db: sqlite3.Connection, backup: Path) -> None:
    """A consistent copy of the database through SQLite's backup API, on disk before we go on."""
    os.close(os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    os.chmod(backup, 0o600)  # one an interrupted upgrade left behind
    target = sqlite3.connect(backup)
    try:
        db.backup(target)
    finally:
        target.close()
    fd = os.open(backup, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(backup.parent)
