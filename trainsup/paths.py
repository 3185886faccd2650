"""Where trainsup keeps its state.

`$TRAINSUP_HOME`, else `$XDG_STATE_HOME/trainsup`, else `~/.local/state/trainsup`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def from_env(cls) -> "StateDir":
        if home := os.environ.get("TRAINSUP_HOME"):
            return cls(Path(home).expanduser().absolute())
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return cls(Path(xdg).expanduser().absolute() / "trainsup")

    @property
    def db(self) -> Path:
        return self.root / "trainsup.db"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def rejected(self) -> Path:
        return self.root / "inbox-rejected"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "daemon.lock"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def attempt_log(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.log"

    def run_dir(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.run"

    def default_checkpoint_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoints"

    def ensure(self) -> None:
        """Create the state dir (0700) and its fixed subdirectories."""
        for path in (self.root, self.inbox, self.rejected, self.root / "jobs"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
