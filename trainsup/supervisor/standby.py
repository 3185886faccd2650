"""Warm standbys, the daemon's side: one per running job, ready to become its next attempt.

While attempt N runs, the daemon starts a monitor in standby mode for attempt N+1
(`monitor.py --standby`). Its process has already imported what the job imports and
waits; when N ends and the decision is to restart, `activate()` writes N+1's launch file
and says `activate` on the standby's control pipe, and the standby becomes the attempt
in milliseconds instead of seconds. The pipe is the standby's lifeline: closing it (the
job finished, was held or cancelled, or the daemon stopped or died) ends the standby.

Only for `python script.py`, `python -m module` and Python entry points such as `torchrun`
(`standby_process.python_entry`); never with CUDA initialised (the standby refuses to
become a job if its preload did).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from trainsup.contracts import STANDBY_DIR_PREFIX, STANDBY_FILE
from trainsup.durable import make_dirs, write_json_atomic
from trainsup.jobs.spec import JobSpec, StandbySpec
from trainsup.userconfig import read_section

log = structlog.get_logger("trainsup.standby")


@dataclass
class Standby:
    """A standby monitor waiting to become attempt `number` of `job_id` (its run dir `run_dir`)."""

    job_id: str
    number: int
    run_dir: Path
    pid: int
    started: float | None  # its create time: with the pid, its identity
    control_fd: int | None  # the write end of its lifeline
    process: subprocess.Popen | None = field(default=None, repr=False)
    cgroup: Path | None = None  # attempt `number`'s memory cgroup, which the standby joined when it started

    def drop(self) -> None:
        """End the standby: it sees the end of its pipe, kills its process and exits."""
        if self.control_fd is not None:
            os.close(self.control_fd)
            self.control_fd = None
        if self.process is not None:
            self.process.poll()


def standby_of(spec: JobSpec) -> StandbySpec:
    """The job's `standby:`, else the user's default (`standby:` in the config file), else on."""
    if spec.standby is not None:
        return spec.standby
    return read_section("standby", StandbySpec, log.warning) or StandbySpec()


def standby_dir(job_dir: Path, number: int) -> Path:
    return job_dir / f"{STANDBY_DIR_PREFIX}{number}"


def prepare(job_dir: Path, number: int, interpreter: list[str], command: list[str], cwd: str | None,
            env: dict[str, str], preload: list[str] | None, cgroup: Path | None) -> Path:
    """The dir of a standby for attempt `number`, with the `standby.json` its monitor reads:
    `interpreter` (the command's Python and its options) runs the standby process, in `cgroup`.

    Raises:
        OSError: the dir or the file could not be written.
    """
    remove_leftovers(job_dir)
    directory = standby_dir(job_dir, number)
    make_dirs(directory, 0o700)
    write_json_atomic(directory / STANDBY_FILE, {
        "interpreter": interpreter, "command": command, "cwd": cwd, "env": env, "preload": preload,
        "cgroup": str(cgroup) if cgroup else None,
    })
    return directory


def activate(standby: Standby) -> None:
    """Tell the standby its launch file is written: it is the attempt now.

    Raises:
        OSError: it was dropped, or is gone (its pipe is closed at the other end).
    """
    if standby.control_fd is None:
        raise OSError(f"the standby for attempt {standby.number} was dropped")
    try:
        os.write(standby.control_fd, b"activate\n")
    finally:
        os.close(standby.control_fd)
        standby.control_fd = None


def remove_leftovers(job_dir: Path) -> None:
    """Standby dirs left by standbys that were dropped or killed (a job has one standby at a time)."""
    for path in job_dir.glob(f"{STANDBY_DIR_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
