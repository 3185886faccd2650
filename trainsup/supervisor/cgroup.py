"""Memory cgroups: a per-job limit, and the kernel's count of OOM kills.

Works with cgroup v2 (`memory.max`, `memory.events`) and with the v1 memory controller
(`memory.limit_in_bytes`, `memory.oom_control`), found through /proc/self/mountinfo.
Everything returns None where cgroups are not usable to us; a step that should have
worked and did not raises `CgroupError`.

On v2 a cgroup holding processes cannot hand the memory controller to children, so a
daemon that wants job cgroups there runs in a delegated unit (systemd `Delegate=yes`)
and first moves itself into a leaf (e.g. `move(os.getpid(), parent / "daemon")`).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainsup.errors import TrainsupError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")


class CgroupError(TrainsupError):
    """A cgroup could not be created, limited or joined."""


@dataclass(frozen=True)
class _Hierarchy:
    version: int
    mount: Path
    root: str

    def directory(self, cgroup: str) -> Path | None:
        """The directory of `cgroup` (a path as /proc/<pid>/cgroup gives it), if mounted."""
        root = self.root.rstrip("/")
        if cgroup != root and not cgroup.startswith(root + "/"):
            return None
        return self.mount / cgroup[len(root):].lstrip("/")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _memory_hierarchy() -> _Hierarchy | None:
    """The mounted hierarchy that has the memory controller, v2 preferred."""
    v1 = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        mount_part, _, fs_part = line.partition(" - ")
        fields, fs_fields = mount_part.split(), fs_part.split()
        if len(fields) < 5 or len(fs_fields) < 3:
            continue
        root, mount = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fs_fields[0] == "cgroup2":
            try:
                controllers = (mount / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "memory" in controllers:
                return _Hierarchy(2, mount, root)
        elif fs_fields[0] == "cgroup" and "memory" in fs_fields[2].split(","):
            v1 = v1 or _Hierarchy(1, mount, root)
    return v1


def cgroup_of(pid: int) -> Path | None:
    """The directory of the memory cgroup that `pid` is in, or None."""
    hierarchy = _memory_hierarchy()
    if hierarchy is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if hierarchy.version == 2 and controllers == "":
            return hierarchy.directory(path)
        if hierarchy.version == 1 and "memory" in controllers.split(","):
            return hierarchy.directory(path)
    return None


def oom_kill_count(pid_or_cgroup_path: int | Path) -> int | None:
    """How many processes the kernel has OOM-killed in a cgroup, or None if unknown.

    A pid names its memory cgroup; resolve it while the process lives (the attempt's
    monitor outlives the job and shares its cgroup). The v2 count includes child cgroups.
    """
    if isinstance(pid_or_cgroup_path, int):
        cgroup = cgroup_of(pid_or_cgroup_path)
        if cgroup is None:
            return None
    else:
        cgroup = Path(pid_or_cgroup_path)
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None
    return None


def create_job_cgroup(name: str, memory_max: int | None, parent: Path | None = None) -> Path | None:
    """Make (or reuse) the memory cgroup `name` under `parent`, our own by default.

    `memory_max` bounds memory and swap together, so a job over it is OOM-killed
    rather than left swapping. Returns None where we cannot create cgroups: no memory
    controller, a parent outside it or not writable, or (v2) no delegation.

    Raises:
        CgroupError: the cgroup was created but its limit could not be set.
    """
    if not _NAME.fullmatch(name):
        raise CgroupError(f"'{name}' is not a valid cgroup name.")
    hierarchy = _memory_hierarchy()
    parent = parent or cgroup_of(os.getpid())
    if hierarchy is None or parent is None or not os.access(parent, os.W_OK):
        return None
    if parent != hierarchy.mount and hierarchy.mount not in parent.parents:
        return None
    if hierarchy.version == 2 and not _delegate_memory(parent):
        return None
    cgroup = parent / name
    try:
        cgroup.mkdir(exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise CgroupError(f"cannot create the cgroup {cgroup} ({exc.strerror}).") from None
    try:
        _set_limit(hierarchy.version, cgroup, memory_max)
    except OSError as exc:
        remove(cgroup)
        raise CgroupError(f"cannot set the memory limit of the cgroup {cgroup} ({exc.strerror}).") from None
    return cgroup


def move(pid: int, cgroup: Path) -> None:
    """Move process `pid` (all its threads) into `cgroup`."""
    try:
        (cgroup / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        raise CgroupError(f"cannot move process {pid} into the cgroup {cgroup} ({exc.strerror}).") from None


def remove(cgroup: Path) -> bool:
    """Remove an empty cgroup; False if it still holds processes or is already gone."""
    try:
        cgroup.rmdir()
    except OSError:
        return False
    return True


def _delegate_memory(parent: Path) -> bool:
    try:
        if "memory" in (parent / "cgroup.subtree_control").read_text().split():
            return True
        (parent / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        return False
    return True


def _set_limit(version: int, cgroup: Path, memory_max: int | None) -> None:
    if version == 2:
        (cgroup / "memory.max").write_text("max" if memory_max is None else str(memory_max))
        swap = cgroup / "memory.swap.max"
        if swap.exists():
            swap.write_text("max" if memory_max is None else "0")
        return
    limit = "-1" if memory_max is None else str(memory_max)
    memsw = cgroup / "memory.memsw.limit_in_bytes"
    # v1 requires memsw >= limit at every moment: open memsw, set limit, close memsw.
    if memsw.exists():
        memsw.write_text("-1")
    (cgroup / "memory.limit_in_bytes").write_text(limit)
    if memsw.exists():
        memsw.write_text(limit)
