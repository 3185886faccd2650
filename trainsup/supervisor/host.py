"""Facts about this machine and its processes: boot id, process identity."""

from __future__ import annotations

import os

import psutil

from trainsup.contracts import boot_id_path


def boot_id() -> str:
    """This boot's id (`contracts.boot_id_path`)."""
    return boot_id_path().read_text().strip()


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_same_process(pid: int | None, started: float | None) -> bool:
    """True if `pid` still names the process that was started at `started` and it runs."""
    if pid is None or started is None:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.05 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def find_monitor(run_dir: str) -> psutil.Process | None:
    """A monitor process serving `run_dir`, found by its command line."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "trainsup.supervisor.monitor" in cmdline and run_dir in cmdline:
            return process
    return None


def open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux 5.3+)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
