"""The attempts the daemon is watching right now."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from trainsup.supervisor.heartbeat import HangTracker


@dataclass
class LiveAttempt:
    """One running attempt and the handles the daemon holds on its monitor."""

    job_id: str
    number: int
    run_dir: Path
    monitor_pid: int
    monitor_started: float | None
    pidfd: int | None
    log_path: Path
    started_at: float  # wall clock, like heartbeat times
    spec: dict
    gpu_uuids: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None  # set when this daemon started the monitor
    job_pid: int | None = None
    started_seen: bool = False
    hang_tracker: HangTracker | None = None
    hung: bool = False
    peak_gpu_memory: int = 0
    seen_pids: set[int] = field(default_factory=set)

    def reap_if_child(self) -> None:
        if self.process is not None:
            self.process.poll()

    def close(self) -> None:
        self.reap_if_child()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
