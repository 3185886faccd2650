"""On start: re-adopt attempts that outlived the previous daemon, settle the rest."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import structlog

from trainsup.contracts import read_json
from trainsup.jobs.states import EndReason
from trainsup.jobs.store import Attempt, Store
from trainsup.supervisor import host
from trainsup.supervisor.attempts import Attempts

log = structlog.get_logger("trainsup.recovery")


def recover(store: Store, attempts: Attempts, now: float) -> None:
    """Settle every attempt the store still thinks is running."""
    for attempt in store.live_attempts():
        _recover_one(store, attempts, attempt, now)


def _recover_one(store: Store, attempts: Attempts, attempt: Attempt, now: float) -> None:
    run_dir = Path(attempt.run_dir)
    ended = read_json(run_dir / "ended.json")
    if ended is not None:
        store.add_event(attempt.job_id, "recovered", f"attempt {attempt.number} ended while the daemon was down", now)
        attempts.finish(attempt.job_id, attempt.number, run_dir, ended, now)
        return
    if attempt.boot_id != attempts.boot_id:
        store.add_event(attempt.job_id, "host_restart", f"attempt {attempt.number} was running when the machine went down", now)
        ended = {**_unknown_end(now), "ended_at": _last_sign_of_life(attempt)}
        attempts.finish(attempt.job_id, attempt.number, run_dir, ended, now, reason=EndReason.HOST_RESTART)
        return
    monitor = _find_live_monitor(attempt)
    if monitor is not None:
        _adopt(store, attempts, attempt, *monitor, now)
        return
    if attempt.monitor_pid is None and not (run_dir / "started.json").exists():
        # The previous daemon died between recording the attempt and starting it.
        store.add_event(attempt.job_id, "never_started", f"attempt {attempt.number} was never started", now)
        attempts.finish(attempt.job_id, attempt.number, run_dir, _unknown_end(now), now, reason=EndReason.INTERRUPTED)
        return
    _kill_orphaned_job(run_dir)
    ended = read_json(run_dir / "ended.json") or {**_unknown_end(now), "lost": True}
    attempts.finish(attempt.job_id, attempt.number, run_dir, ended, now)


def _find_live_monitor(attempt: Attempt) -> tuple[int, float] | None:
    if host.is_same_process(attempt.monitor_pid, attempt.monitor_started):
        return attempt.monitor_pid, attempt.monitor_started
    # The daemon may have died between starting the monitor and recording its pid.
    process = host.find_monitor(attempt.run_dir)
    if process is not None:
        return process.pid, process.create_time()
    return None


def _adopt(store: Store, attempts: Attempts, attempt: Attempt, pid: int, started: float, now: float) -> None:
    with store.transaction():
        store.update_attempt(attempt.job_id, attempt.number, monitor_pid=pid, monitor_started=started)
        store.add_event(attempt.job_id, "adopted", f"attempt {attempt.number} re-adopted (monitor pid {pid})", now)
    attempts.adopt(attempt, pid, started)
    job = store.job(attempt.job_id)
    if job.stop_requested:
        attempts.request_stop(job.id)  # the previous daemon may have died before sending it
    log.info("re-adopted attempt", job=attempt.job_id, attempt=attempt.number, monitor_pid=pid)


def _kill_orphaned_job(run_dir: Path) -> None:
    """The monitor is gone; a job it started may still run: never let two overlap."""
    started = read_json(run_dir / "started.json")
    if not started:
        return
    pid = started["job_pid"]
    created = host.create_time(pid)
    if created is None or abs(created - started["started_at"]) > 2.0:
        return
    try:
        os.killpg(started["pgid"], signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 5
    while host.create_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def _last_sign_of_life(attempt: Attempt) -> float:
    """When an attempt cut off by a power loss last showed it was alive: its log or heartbeats."""
    paths = [Path(attempt.log_path), *Path(attempt.run_dir, "heartbeat").glob("rank-*.json")]
    times = [attempt.started_at]
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def _unknown_end(now: float) -> dict:
    return {"exit_code": None, "signal": None, "ended_at": now}
