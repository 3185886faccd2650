"""The attempts the daemon is watching right now."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LiveAttempt:
    """One running attempt and the handles the daemon holds on its monitor."""

    job_id: str
    number: int
    run_dir: Path
    monitor_pid: int
    monitor_started: float | None
    pidfd: int | None
    process: subprocess.Popen | None = None  # set when this daemon started the monitor
    started_seen: bool = False
    extra: dict = field(default_factory=dict)

    def reap_if_child(self) -> None:
        if self.process is not None:
            self.process.poll()

    def close(self) -> None:
        self.reap_if_child()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
