"""Where trainsup keeps its state.

`$TRAINSUP_HOME`, else `$XDG_STATE_HOME/trainsup`, else `~/.local/state/trainsup`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainsup.durable import make_dirs


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

    @property
    def disk_status(self) -> Path:
        """The daemon's word on the disk (`trainsup.diskspace`), overwritten in place."""
        return self.root / "disk-status"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def attempt_log(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.log"

    def run_dir(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}.run"

    def default_checkpoint_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoints"

    def ensure(self) -> None:
        """Create the state dir and its fixed subdirectories: 0700, each made durable in its parent."""
        for path in (self.root, self.inbox, self.rejected, self.root / "jobs"):
            make_dirs(path, 0o700)
        os.chmod(self.root, 0o700)

    def make_private(self) -> None:
        """Take group and other access away from what trainsup keeps here (files 0600, dirs 0700).

        For state dirs an older trainsup left with 0644 files and 0755 dirs. Directories
        trainsup does not own (a job's checkpoint dir) are made 0700, their contents left
        with the modes the job gave them.
        """
        _make_private(self.root)
        for entry in _entries(self.root):
            if entry == self.root / "jobs":
                _make_private(entry)
                for job_dir in _entries(entry):
                    _make_private(job_dir)
                    for item in _entries(job_dir):
                        _make_private(item, descend=item.name.endswith(".run"))
            else:
                _make_private(entry, descend=entry in (self.inbox, self.rejected))


def _entries(directory: Path) -> list[Path]:
    try:
        return [directory / name for name in os.listdir(directory)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _make_private(path: Path, *, descend: bool = False) -> None:
    """Clear the group and other bits of `path` (and of everything under it if `descend`); links are left alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    if descend and stat.S_ISDIR(st.st_mode):
        for entry in _entries(path):
            _make_private(entry, descend=True)
