"""Watching running attempts for hangs: heartbeat silence, or log silence if opted in."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from trainsup.durable import write_json_atomic
from trainsup.supervisor.heartbeat import (
    HangPolicy,
    HangTracker,
    HangVerdict,
    is_hung,
    new_attempt,
    observe,
    read_heartbeats,
)

log = structlog.get_logger("trainsup.hangs")

STACK_DUMP_WAIT_S = 1.0


def hang_policy(spec: dict[str, Any]) -> HangPolicy:
    beat = spec.get("heartbeat") or {}
    return HangPolicy(
        fixed_timeout=beat.get("timeout"),
        first_timeout=beat.get("first_timeout", 3600.0),
        checkpoint_timeout=beat.get("checkpoint_timeout", 1800.0),
        safety_factor=beat.get("safety_factor", 5.0),
        min_timeout=beat.get("min_timeout", 60.0),
    )


def start_tracking(tracker: HangTracker | None, attempt_started_at: float) -> HangTracker:
    return new_attempt(tracker or HangTracker(), attempt_started_at)


def check(
    tracker: HangTracker, spec: dict[str, Any], run_dir: Path, log_path: Path,
    attempt_started_at: float, now: float,
) -> tuple[HangTracker, HangVerdict | None]:
    """Fold in new heartbeats; return the tracker and a verdict if the attempt is hung."""
    beats = read_heartbeats(run_dir / "heartbeat")
    for beat in sorted(beats, key=lambda b: b.time):
        tracker = observe(tracker, beat.time, beat.phase)
    verdict = is_hung(tracker, hang_policy(spec), attempt_started_at, now)
    silence_limit = (spec.get("heartbeat") or {}).get("log_silence")
    if verdict is None and silence_limit and not tracker.ever_beat:
        verdict = _log_silence(log_path, silence_limit, attempt_started_at, now)
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
    return {beat.pid for beat in read_heartbeats(run_dir / "heartbeat") if beat.pid > 0}


def kill_hung(run_dir: Path, job_pgid: int | None, verdict: HangVerdict) -> None:
    """Dump every thread's stack into the job log, record the verdict, kill the job."""
    write_json_atomic(run_dir / "hang.json", {"verdict": verdict.describe(), "timeout": verdict.timeout,
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
