"""At most one run per checkpoint directory (standalone; under the daemon it holds the lock)."""

from __future__ import annotations

import os
from pathlib import Path

from trainsup.contracts import LOCK_FILE, UnsafeLockFileError, open_lock_file, try_lock, write_owner
from trainsup.trainer.errors import CheckpointDirLockedError, TrainerError, UnsafeCheckpointDirError


class DirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take `<dir>/.lock` and write our pid in it.

        Raises:
            CheckpointDirLockedError: another process holds it.
            UnsafeCheckpointDirError: `.lock` is a symlink, not a regular file, or a hard
                link: writing our pid into it could overwrite another file.
            TrainerError: it cannot be opened (e.g. another user's lock file).
        """
        try:
            fd = open_lock_file(self.path)
        except UnsafeLockFileError as exc:
            what = str(exc)  # "the lock file … is a symbolic link"
            raise UnsafeCheckpointDirError(
                f"{what[:1].upper()}{what[1:]}; refusing to write this run's pid through it (remove it if you made it)."
            ) from None
        except OSError as exc:
            raise TrainerError(f"Cannot open the lock file {self.path} ({exc.strerror}).") from None
        try:
            locked = try_lock(fd)
            if locked:
                write_owner(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise CheckpointDirLockedError(
                f"Another run is using the checkpoint directory {self.path.parent} (its lock {self.path} is held)."
            )
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
