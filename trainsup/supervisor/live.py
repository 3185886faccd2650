"""The attempts the daemon is watching right now."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainsup.jobs.spec import JobSpec
from trainsup.supervisor.hang_policy import HangTracker
from trainsup.supervisor.launcher import MonitorHandle


@dataclass
class LiveAttempt:
    """One running attempt and what the daemon keeps about it between loop steps."""

    job_id: str
    number: int
    run_dir: Path
    log_path: Path
    monitor: MonitorHandle
    started_at: float  # wall clock, like heartbeat times
    spec: JobSpec
    hang_tracker: HangTracker
    gpu_uuids: list[str] = field(default_factory=list)
    job_pid: int | None = None
    started_seen: bool = False
    resume_seen: bool = False  # the trainer's resume.json was read
    hung: bool = False
    peak_gpu_memory: int = 0
    seen_pids: set[int] = field(default_factory=set)
    warm: bool = False  # its job was a warm standby (started.json says so)
    standby_tried: bool = False  # a standby for the next attempt was started (or cannot be)
