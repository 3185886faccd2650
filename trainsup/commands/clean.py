"""`trainsup clean` and `trainsup remove JOB`: finished jobs, their logs, run dirs and checkpoints.

The daemon is the only writer of the database, so a removal travels as a `remove`
control request through the inbox. The daemon applies it in the one transaction that
marks the request taken, after checking again that the job is finished and that no
job waits for it: a job restarted between this command's look and the daemon's is not
removed, and a removal cut short by a crash is redone whole. This command measures
first (which jobs, how many bytes), writes the requests and, while a daemon runs,
waits until they are applied, then measures again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainsup import cleanup
from trainsup.commands.common import daemon_running, open_store, resolve_job
from trainsup.errors import TrainsupError
from trainsup.jobs import inbox
from trainsup.jobs.store import Job, Store
from trainsup.paths import StateDir

WAIT_S = 120.0


@dataclass(frozen=True)
class Removal:
    id: str
    name: str
    state: str
    finished_at: float
    paths: list[Path]
    bytes: int
    kept: str | None  # why a named checkpoint dir stays

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state, "finished_at": self.finished_at,
                "paths": [str(p) for p in self.paths], "bytes": self.bytes, "kept": self.kept}


@dataclass
class Outcome:
    removals: list[Removal]
    bytes: int  # what the removals free, measured before
    dry_run: bool
    freed: int | None = None  # measured after, when the daemon applied them
    not_removed: list[str] = field(default_factory=list)  # ids the daemon did not remove (yet)
    daemon_running: bool = True

    def to_json(self) -> dict:
        return {"jobs": [r.to_json() for r in self.removals], "bytes": self.bytes, "dry_run": self.dry_run,
                "freed": self.freed, "not_removed": self.not_removed, "daemon_running": self.daemon_running}


def clean(state: StateDir, older_than: float | None, checkpoints: bool, dry_run: bool, now: float) -> Outcome:
    """Remove every finished job (that finished more than `older_than` seconds ago, if given)."""
    store = open_store(state)
    if store is None:
        return Outcome([], 0, dry_run)
    try:
        jobs = [job for job in store.jobs() if job.state.is_terminal
                and (older_than is None or job.state_since <= now - older_than) and not store.waiting_on(job.id)]
        removals = plan(state, store, jobs, checkpoints)
    finally:
        store.close()
    return apply(state, removals, checkpoints, dry_run)


def remove(state: StateDir, key: str, checkpoints: bool, dry_run: bool) -> Outcome:
    """Remove one finished job.

    Raises:
        TrainsupError: the job is not finished, or a job waits for it (exit 1).
    """
    store = open_store(state)
    try:
        ref = resolve_job(state, store, key)
        job = None if ref.pending or store is None else store.job(ref.id)
        if job is None or not job.state.is_terminal:
            current = "queued" if job is None else str(job.state)
            raise TrainsupError(f"job {ref.id} is {current}; only a finished job can be removed "
                                f"(`trainsup cancel {ref.id}` stops it first).")
        if waiting := store.waiting_on(job.id):
            raise TrainsupError(f"job {job.id} cannot be removed: job {waiting[0]} waits for it (after:).")
        removals = plan(state, store, [job], checkpoints)
    finally:
        if store is not None:
            store.close()
    return apply(state, removals, checkpoints, dry_run)


def plan(state: StateDir, store: Store, jobs: list[Job], checkpoints: bool) -> list[Removal]:
    """What removing `jobs` deletes, as the daemon will decide it, removing them in this order."""
    removing = {job.id for job in jobs}
    claimed: dict[Path, str] = {}  # a named checkpoint dir shared by jobs removed together goes with the last
    named_of: dict[str, tuple[Path | None, str | None]] = {}
    for job in jobs:
        named, kept = None, None
        if checkpoints:
            named, kept = cleanup.named_checkpoint_dir(state.job_dir(job.id), job.checkpoint_dir,
                                                       cleanup.workdir_of(job.spec_json))
            if named is not None and (others := set(store.jobs_using_checkpoint_dir(str(named))) - removing):
                named, kept = None, f"kept {named}: job {sorted(others)[0]} uses it too"
        if named is not None:
            if named in claimed:
                earlier = claimed[named]
                named_of[earlier] = (None, f"kept {named}: job {job.id} uses it too")
            claimed[named] = job.id
        named_of[job.id] = (named, kept)
    removals = []
    for job in jobs:
        named, kept = named_of[job.id]
        paths = [p for p in cleanup.removal_paths(state.job_dir(job.id), named, job.id) if os.path.lexists(p)]
        removals.append(Removal(job.id, job.name, str(job.state), job.state_since, paths,
                                cleanup.disk_usage(paths), kept))
    return removals


def apply(state: StateDir, removals: list[Removal], checkpoints: bool, dry_run: bool) -> Outcome:
    paths = [p for r in removals for p in r.paths]
    outcome = Outcome(removals, cleanup.disk_usage(paths), dry_run)
    if dry_run or not removals:
        return outcome
    state.ensure()
    for removal in removals:
        request = {"kind": "control", "job_id": removal.id, "action": "remove", "requested_at": time.time()}
        if checkpoints:
            request["checkpoints"] = True
        inbox.drop(state.inbox, request)
    outcome.daemon_running = daemon_running(state)
    if not outcome.daemon_running:
        outcome.not_removed = [r.id for r in removals]
        return outcome
    outcome.not_removed = _wait_until_removed(state, [r.id for r in removals])
    outcome.freed = outcome.bytes - cleanup.disk_usage(paths)
    return outcome


def _wait_until_removed(state: StateDir, ids: list[str]) -> list[str]:
    """Wait while the daemon takes the requests; return the ids still in the store."""
    deadline = time.monotonic() + WAIT_S
    while True:
        # The inbox first: a request leaves it only after its transaction committed.
        taken = not any(_is_remove_request(p) for p in inbox.pending(state.inbox))
        store = open_store(state)
        try:
            left = [job_id for job_id in ids if store is not None and store.job(job_id) is not None]
        finally:
            if store is not None:
                store.close()
        if not left or taken or time.monotonic() > deadline or not daemon_running(state):
            return left
        time.sleep(0.1)


def _is_remove_request(path: Path) -> bool:
    try:
        return b'"remove"' in (inbox.read(path) or b"")
    except OSError:
        return False
