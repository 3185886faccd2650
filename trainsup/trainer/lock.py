"""At most one run per checkpoint directory (standalone; under the daemon it holds the lock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainsup.trainer.errors import CheckpointDirLockedError


class DirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointDirLockedError(
                f"Another run is using the checkpoint directory {self.path.parent} (its lock {self.path} is held)."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
