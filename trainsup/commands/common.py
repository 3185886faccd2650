"""What every read-side command needs: the store, pending submissions, job lookup."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trainsup.contracts import lock_owner
from trainsup.errors import AmbiguousJobError, JobNotFoundError
from trainsup.jobs import inbox
from trainsup.jobs.store import Store
from trainsup.paths import StateDir


@dataclass(frozen=True)
class JobRef:
    id: str
    name: str
    pending: bool  # still in the inbox: the daemon has not ingested it yet


def open_store(state: StateDir) -> Store | None:
    """The store, read-only; None before the daemon first ran.

    Raises:
        DatabaseVersionError: another version of trainsup wrote it (the CLI prints the sentence).
    """
    return Store.open_readonly(state.db)


def pending_submissions(state: StateDir) -> list[dict]:
    """Submissions in the inbox the daemon has not taken yet."""
    found = []
    for path in inbox.pending(state.inbox):
        try:
            data = inbox.read(path)  # untrusted: no symlink followed, no FIFO waited on
            request = json.loads(data) if data is not None else None
        except (OSError, ValueError):
            continue
        if _looks_like_submission(request):
            found.append(request)
    return found


def _looks_like_submission(request: object) -> bool:
    """Enough of a submission for `status` and `show` to list it; the daemon checks the rest."""
    return (isinstance(request, dict) and request.get("kind") == "submit"
            and isinstance(request.get("job_id"), str)
            and isinstance(request.get("spec"), dict) and isinstance(request["spec"].get("name"), str)
            and isinstance(request.get("submitted_at"), (int, float))
            and all(key in request for key in ("spec_text", "spec_path")))


def daemon_pid(lock_path: Path) -> int | None:
    """The pid of the daemon holding `lock_path`, 0 if it holds it but wrote no pid, None if none does."""
    return lock_owner(lock_path)


def daemon_running(state: StateDir) -> bool:
    """True if a daemon holds the state dir's lock."""
    return daemon_pid(state.daemon_lock) is not None


def resolve_job(state: StateDir, store: Store | None, key: str) -> JobRef:
    """Find a job by id, exact name (newest wins), id prefix or unique name prefix."""
    candidates = _all_refs(state, store)
    for match in (
        [c for c in candidates if c.id == key],
        [c for c in candidates if c.name == key][-1:],
        [c for c in candidates if c.id.startswith(key)],
        _unique_names([c for c in candidates if c.name.startswith(key)]),
    ):
        if len(match) == 1:
            return match[0]
        if len(match) > 1:
            names = ", ".join(sorted({f"{c.name} ({c.id})" for c in match})[:5])
            raise AmbiguousJobError(f"'{key}' matches several jobs: {names}; give more of the id or name.")
    raise JobNotFoundError(f"no job matches '{key}'; see `trainsup status` for ids and names.")


def _unique_names(refs: list[JobRef]) -> list[JobRef]:
    by_name: dict[str, JobRef] = {}
    for ref in refs:
        by_name[ref.name] = ref  # newest job of a name wins
    return list(by_name.values())


def _all_refs(state: StateDir, store: Store | None) -> list[JobRef]:
    # The inbox first: a submission leaves it only after the daemon committed its job, so
    # reading the store second cannot miss a job that moved between the two reads.
    pending = pending_submissions(state)
    refs = []
    if store is not None:
        refs += [JobRef(row["id"], row["name"], False) for row in store.job_summaries()]
    known = {r.id for r in refs}
    refs += [JobRef(s["job_id"], s["spec"]["name"], True) for s in pending if s["job_id"] not in known]
    return refs


def read_text_tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def waiting_text(state: StateDir, store: Store | None, ref: JobRef) -> str:
    """Why a job that has not started is waiting, e.g. `queued: waiting for 1 free GPU(s)`.

    The daemon writes a `waiting` event when it cannot place a queued job; the newest
    event of a queued job says whether that is still why.
    """
    if ref.pending or store is None:
        if daemon_running(state):
            return "queued: the daemon has not taken it yet"
        return "queued: the daemon is not running"
    job = store.job(ref.id)
    if job is None:
        return "queued"
    if job.state == "held":
        return f"held: `trainsup release {ref.id}` lets it start"
    if job.state == "queued":
        return waiting_reason(store, ref.id) or "queued"
    return str(job.state)


def waiting_reason(store: Store, job_id: str) -> str | None:
    """`queued: <the daemon's reason>` when the newest event of the job is a `waiting` one."""
    events = store.events(job_id)
    if events and events[-1].kind == "waiting":
        return f"queued: {events[-1].message}"
    return None
