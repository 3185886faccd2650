"""Groups: named queues with a limit on how many of their jobs run at once. Stdlib only.

A job names its group with `group:`. Without one, a CPU job is in `default` and a GPU
job is in no group: its GPUs already limit it. Limits set with `trainsup group set`
live in `groups.json` in the state dir (written by the CLI atomically, read by the
daemon on every pass); a group never set has `default_limit()`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

from trainsup.durable import write_json_atomic

DEFAULT_GROUP = "default"
LIMITS_FILE = "groups.json"
GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # as a job's name (jobs/spec.py)
MAX_LIMIT = 2**31 - 1


def group_of(group: str | None, gpus: int) -> str | None:
    """The group a job is in: the one it names, else `default` for a CPU job, else none."""
    if group is not None:
        return group
    return None if gpus else DEFAULT_GROUP


def default_limit(name: str, cpu_count: int | None) -> int:
    """`default` runs half as many jobs as there are CPUs, at least 2; any other group 1, as pueue's."""
    return max(2, (cpu_count or 1) // 2) if name == DEFAULT_GROUP else 1


def limits_path(state_root: Path) -> Path:
    return state_root / LIMITS_FILE


def read_limits(path: Path) -> dict[str, int]:
    """The limits set so far; a missing or damaged file sets none."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: limit for name, limit in data.items()
            if isinstance(name, str) and GROUP_NAME.fullmatch(name)
            and isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= MAX_LIMIT}


def set_limit(path: Path, name: str, limit: int) -> None:
    """Record `limit` for `name`, durably; two CLIs setting limits at once both count."""
    lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        limits = read_limits(path)
        limits[name] = limit
        write_json_atomic(path, limits)
    finally:
        os.close(lock)
