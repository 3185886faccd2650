"""The file-system operations a checkpoint save is made of, behind one seam.

Every mutation of the checkpoint directory goes through a `FileOps` object, so
tests can record the operations, crash after any of them, drop what was not
fsynced, or make a write fail with ENOSPC. Reads go straight to the OS.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from trainsup import durable

Writer = Callable[[BinaryIO], None]


class FileOps:
    """The real operations. Subclass and override to inject faults."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def write_file(self, path: Path, write: Writer) -> None:
        """Create `path` (it must not exist) and fill it by calling `write`; no fsync."""
        with open(path, "xb") as file:
            write(file)

    def fsync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: Path) -> None:
        durable.fsync_dir(path)

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically move `src` to `dst`, replacing a file (never a non-empty directory)."""
        os.replace(src, dst)

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path)

    def remove_file(self, path: Path) -> None:
        os.unlink(path)
