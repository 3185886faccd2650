"""The inbox: requests the CLI drops as files and the daemon ingests.

A request is durable once `drop` returns (temp file, fsync, rename, fsync dir),
whether or not a daemon is running. Stdlib only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from trainsup.durable import write_atomic

# A job file (1 MiB) and a resolved spec, JSON-escaped, with the inherited environment.
MAX_REQUEST_BYTES = 16 * 2**20


def drop(inbox: Path, request: dict[str, Any]) -> Path:
    """Durably place one request in the inbox; return its final path."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    final = inbox / name
    # 0600, and no temp file left behind when the write fails (a full disk).
    write_atomic(final, json.dumps(request).encode(), tmp=inbox / f".{name}.tmp")
    return final


def pending(inbox: Path) -> list[Path]:
    """Requests waiting to be ingested, oldest first."""
    try:
        names = sorted(n for n in os.listdir(inbox) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [inbox / name for name in names]


def read(path: Path) -> bytes | None:
    """The bytes of one request, None if it is gone.

    The inbox is read as untrusted input: a symbolic link is not followed and a FIFO is
    not waited on.

    Raises:
        ValueError: one line on why this file is no request.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else f"cannot open it ({exc.strerror})"
        raise ValueError(why) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_REQUEST_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than the {MAX_REQUEST_BYTES // 2**20} MiB a request may hold")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_REQUEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"more than the {MAX_REQUEST_BYTES // 2**20} MiB a request may hold")
    return data


def set_aside(path: Path, rejected: Path) -> bool:
    """Move a bad request out of the inbox (into `rejected`), or remove it; False if neither worked."""
    try:
        rejected.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, rejected / path.name)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        return True
    except OSError:
        return False


def remove_stale_temp_files(inbox: Path, older_than_s: float = 60.0) -> None:
    """Temp files left by a CLI that died mid-drop are never requests."""
    cutoff = time.time() - older_than_s
    for path in inbox.glob(".*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass
