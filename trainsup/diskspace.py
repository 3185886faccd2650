"""A full disk under the state dir: how to tell, and how the daemon says so.

A daemon that cannot write keeps supervising (see `Daemon.step`) and says so in
`disk-status`, a small file it allocates at start while there is room and then only
overwrites in place, which a full disk allows. `trainsup status` and `trainsup doctor`
read it while a daemon holds the lock, and measure free space themselves, so both
answer without asking the daemon. Stdlib only.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from pathlib import Path

from trainsup.contracts import lock_owner
from trainsup.paths import StateDir

SQLITE_FULL = 13
FULL_BELOW_BYTES = 1 << 20  # less than this left for us counts as full
STATUS_SIZE = 512


def is_disk_full(exc: BaseException) -> bool:
    """True for what a full disk or an exhausted quota raises: ENOSPC, EDQUOT, SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == SQLITE_FULL) or "database or disk is full" in str(exc)
    return False


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on the file system of `path`; None if unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_blocks == 0:
        return None  # some FUSE file systems report no sizes at all
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize  # root may use the reserve


class DiskStatus:
    """The daemon's `disk-status` file: allocated once, then overwritten in place."""

    def __init__(self, path: Path):
        self.path = path

    def prepare(self) -> None:
        """Allocate the file (0600) while there is room. Raises OSError if there is none."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.pwrite(fd, _padded({"disk_full": False}), 0)
            os.ftruncate(fd, STATUS_SIZE)
        finally:
            os.close(fd)

    def report(self, full: bool, since: float | None = None, error: str | None = None) -> None:
        """Say whether the daemon can write; never raises (status also measures free space)."""
        record = {"disk_full": full, "since": since, "error": error[:200] if error else None}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            os.pwrite(fd, _padded(record), 0)
        except OSError:
            pass
        finally:
            os.close(fd)


def read_status(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def notice(state: StateDir) -> str | None:
    """One sentence if the disk under the state dir is full, else None."""
    record = read_status(state.disk_status)
    if record and record.get("disk_full") and _daemon_running(state):
        since = record.get("since")
        when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""
        return (f"disk full: the daemon cannot write to {state.root}{when}; it keeps watching the running"
                " jobs, starts nothing new, and carries on by itself once space is freed.")
    free = free_bytes(state.root if state.root.exists() else state.root.parent)
    if free is not None and free < FULL_BELOW_BYTES:
        return (f"disk full: {free // 1024} KiB left under {state.root}; nothing new can be recorded"
                " until space is freed.")
    return None


def _daemon_running(state: StateDir) -> bool:
    try:
        return lock_owner(state.daemon_lock) is not None
    except OSError:
        return False


def _padded(record: dict) -> bytes:
    data = json.dumps(record).encode()
    return data + b" " * max(0, STATUS_SIZE - len(data))
