"""On start: re-adopt attempts that outlived the previous daemon, settle the rest."""

from __future__ import annotations

from pathlib import Path

import structlog

from trainsup.contracts import read_ended
from trainsup.jobs.store import Attempt, Store
from trainsup.supervisor.attempts import Attempts

log = structlog.get_logger("trainsup.recovery")


def recover(store: Store, attempts: Attempts, now: float) -> None:
    """Settle every attempt the store still thinks is running, and remove what the previous
    daemon's standbys made for attempts that never started."""
    for attempt in store.live_attempts():
        _recover_one(store, attempts, attempt, now)
    attempts.remove_orphaned_standby_leftovers()


def _recover_one(store: Store, attempts: Attempts, attempt: Attempt, now: float) -> None:
    run_dir = Path(attempt.run_dir)
    ended = read_ended(run_dir)
    if ended is not None:
        store.add_event(attempt.job_id, "recovered", f"attempt {attempt.number} ended while the daemon was down", now)
        attempts.finish(attempt.job_id, attempt.number, ended, now)
        return
    if attempt.boot_id != attempts.boot_id:
        store.add_event(attempt.job_id, "host_restart",
                        f"attempt {attempt.number} was running when the machine went down", now)
        attempts.finish(attempt.job_id, attempt.number, None, now, host_restart=True)
        return
    monitor = _find_live_monitor(attempts, attempt)
    if monitor is not None:
        _adopt(store, attempts, attempt, *monitor, now)
        return
    attempts.launcher.kill_orphaned_job(run_dir)
    # Whether it never started or was lost, observe() tells from the run dir.
    attempts.finish(attempt.job_id, attempt.number, read_ended(run_dir), now)


def _find_live_monitor(attempts: Attempts, attempt: Attempt) -> tuple[int, float] | None:
    if attempts.launcher.is_alive(attempt.monitor_pid, attempt.monitor_started):
        return attempt.monitor_pid, attempt.monitor_started
    # The daemon may have died between starting the monitor and recording its pid.
    return attempts.launcher.find(attempt.run_dir)


def _adopt(store: Store, attempts: Attempts, attempt: Attempt, pid: int, started: float, now: float) -> None:
    with store.transaction():
        store.update_attempt(attempt.job_id, attempt.number, monitor_pid=pid, monitor_started=started)
        store.add_event(attempt.job_id, "adopted", f"attempt {attempt.number} re-adopted (monitor pid {pid})", now)
    attempts.watch_attempt(attempt, attempts.launcher.attach(pid, started))
    job = store.job(attempt.job_id)
    if job.stop_requested:
        attempts.request_stop(job.id)  # the previous daemon may have died before sending it
    log.info("re-adopted attempt", job=attempt.job_id, attempt=attempt.number, monitor_pid=pid)
