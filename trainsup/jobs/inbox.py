"""The inbox: requests the CLI drops as files and the daemon ingests.

A request is durable once `drop` returns (temp file, fsync, rename, fsync dir),
whether or not a daemon is running. Stdlib only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from trainsup.durable import fsync_dir


def drop(inbox: Path, request: dict[str, Any]) -> Path:
    """Durably place one request in the inbox; return its final path."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    tmp = inbox / f".{name}.tmp"
    with open(tmp, "w") as handle:
        json.dump(request, handle)
        handle.flush()
        os.fsync(handle.fileno())
    final = inbox / name
    os.rename(tmp, final)
    fsync_dir(inbox)
    return final


def pending(inbox: Path) -> list[Path]:
    """Requests waiting to be ingested, oldest first."""
    try:
        names = sorted(n for n in os.listdir(inbox) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [inbox / name for name in names]


def remove_stale_temp_files(inbox: Path, older_than_s: float = 60.0) -> None:
    """Temp files left by a CLI that died mid-drop are never requests."""
    cutoff = time.time() - older_than_s
    for path in inbox.glob(".*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass
