"""Watching running attempts for hangs: heartbeat silence, or log silence if opted in."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import structlog

from trainsup.contracts import HANG_FILE, HEARTBEAT_DIR, read_heartbeats
from trainsup.durable import write_json_atomic
from trainsup.jobs.spec import HeartbeatPolicy
from trainsup.supervisor.hang_policy import HangPolicy, HangTracker, HangVerdict, is_hung, observe

log = structlog.get_logger("trainsup.hangs")

STACK_DUMP_WAIT_S = 1.0


def check(
    tracker: HangTracker, policy: HeartbeatPolicy, run_dir: Path, log_path: Path,
    attempt_started_at: float, now: float,
) -> tuple[HangTracker, HangVerdict | None]:
    """Fold in new heartbeats; return the tracker and a verdict if the attempt is hung."""
    beats = read_heartbeats(run_dir / HEARTBEAT_DIR)
    for beat in sorted(beats, key=lambda b: b.time):
        tracker = observe(tracker, beat.time, beat.phase)
    verdict = is_hung(tracker, HangPolicy.of(policy), attempt_started_at, now)
    if verdict is None and policy.log_silence and not tracker.ever_beat:
        verdict = _log_silence(log_path, policy.log_silence, attempt_started_at, now)
    return tracker, verdict


def _log_silence(log_path: Path, limit: float, attempt_started_at: float, now: float) -> HangVerdict | None:
    try:
        last_output = max(log_path.stat().st_mtime, attempt_started_at)
    except FileNotFoundError:
        last_output = attempt_started_at
    silence = now - last_output
    return HangVerdict("log_silence", limit, silence, None) if silence > limit else None


def heartbeat_pids(run_dir: Path) -> set[int]:
    """The processes that send heartbeats: they have the stack-dump handler installed."""
    return {beat.pid for beat in read_heartbeats(run_dir / HEARTBEAT_DIR) if beat.pid > 0}


def kill_hung(run_dir: Path, job_pgid: int | None, verdict: HangVerdict) -> None:
    """Dump every thread's stack into the job log, leave the verdict for people, kill the job."""
    write_json_atomic(run_dir / HANG_FILE, {"verdict": verdict.describe(), "timeout": verdict.timeout,
                                            "silence": verdict.silence, "at": time.time()})
    dumped = False
    for pid in heartbeat_pids(run_dir):
        try:
            os.kill(pid, signal.SIGUSR2)  # trainsup.trainer registers faulthandler on it
            dumped = True
        except (ProcessLookupError, PermissionError):
            pass
    if dumped:
        time.sleep(STACK_DUMP_WAIT_S)
    if job_pgid is not None:
        try:
            os.killpg(job_pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    log.warning("killed a hung attempt", run_dir=str(run_dir), verdict=verdict.describe())
