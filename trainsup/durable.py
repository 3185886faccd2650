"""Durable file writes and directories: temp file, fsync, rename, fsync the directory.

A new file or directory survives a power cut only once the directory entry naming it
is on disk too, so every creation here ends with an fsync of the parent.

Stdlib only: the attempt monitor imports this.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o700) -> list[Path]:
    """Create `path` and its missing parents, each with `mode`, each made durable in its parent.

    Returns the directories this call created, outermost first.

    Raises:
        FileExistsError: `path` exists and is not a directory.
    """
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    created = []
    for level in reversed(missing):
        try:
            os.mkdir(level, mode)
            created.append(level)
        except FileExistsError:
            pass  # made meanwhile by another process, which may not have synced it yet
        fsync_dir(level.parent)
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    return created


def write_atomic(path: Path, data: bytes, *, tmp: Path | None = None) -> None:
    """Replace `path` with `data` (mode 0600) so that a crash leaves the old or the new file.

    `tmp` names the temp file (default `.NAME.tmp-PID` beside `path`); it is removed
    again if the write fails, e.g. on a full disk.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True).encode())
