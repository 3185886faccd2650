"""What the daemon saw of one ended attempt, gathered in one place.

Every ending goes through `observe()`: an exit the daemon watched, one it finds on
re-adoption or at start-up, a monitor that vanished, an attempt cut off by a power
loss, a monitor that could not even be started. `classify()` turns the observation
into a reason; nothing else does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainsup.contracts import (
    EXIT_PREEMPTED,
    HEARTBEAT_DIR,
    STARTED_FILE,
    EndedRecord,
    TrainerExit,
    describe_exit,
    read_json,
    read_launch,
    read_trainer_exit,
)
from trainsup.jobs.store import Attempt, Job
from trainsup.layouts import find_checkpoints, newest_write
from trainsup.supervisor import cgroup

LOG_TAIL_BYTES = 16384
# The line a Python traceback ends with: `RuntimeError: ...`, `safetensors_rust.SafetensorError: ...`.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*$", re.MULTILINE)


@dataclass(frozen=True)
class Observation:
    """The facts about one ended attempt. Built only by `observe()`."""

    ended_at: float
    exit_code: int | None = None
    signal: int | None = None
    spawn_error: str | None = None  # the monitor or the command could not be started
    never_started: bool = False  # stopped (or the daemon died) before the job was started
    lost: bool = False  # the monitor vanished without recording an exit
    host_restart: bool = False  # it was running when the machine went down
    stop_requested: str | None = None  # "cancel" or "shutdown": we asked it to stop
    trainer_exit: TrainerExit | None = None  # exit.json from trainsup.trainer
    log_tail: str = ""
    oom_kills: int | None = None  # the kernel's OOM kills in the attempt's cgroup; None: unknown
    hang_verdict: str | None = None  # why the daemon killed it as hung
    job_pid: int | None = None
    checkpoints: tuple[str, ...] = ()  # the checkpoints a restart would find, newest first
    newest_write: float | None = None  # the newest file time under the checkpoint dir
    cgroup: Path | None = None  # the attempt's memory cgroup, to remove once empty

    @property
    def checkpoint(self) -> str | None:
        return self.checkpoints[0] if self.checkpoints else None

    def declared(self, reason: str) -> bool:
        """The training process said so in exit.json (`finished`, `config_error`, `oom`, ...)."""
        return self.trainer_exit is not None and self.trainer_exit.reason == reason

    @property
    def saved_at_a_stop(self) -> bool:
        """Exit 75, or a failure status from a launcher after the trainer said it checkpointed
        at a stop: torchrun (and `accelerate launch`) exit 1 when their workers exit 75.

        exit.json lies in this attempt's own run dir (`attempt-N.run/`, made new for each
        attempt), so it was written during this attempt. A death by a signal does not count:
        torchrun turns a SIGTERM into exit 1, and a SIGKILL may have come before the exit.
        """
        if self.exit_code == EXIT_PREEMPTED:
            return True
        return self.exit_code not in (None, 0) and self.signal is None and self.declared("preempted")

    @property
    def error_line(self) -> str | None:
        """The job's own words: exit.json's detail, else the last exception line of its log."""
        if self.trainer_exit is not None and self.trainer_exit.detail:
            return self.trainer_exit.detail
        found = _ERROR_LINE.findall(self.log_tail)
        return _shorten(found[-1].strip()) if found else None

    def describe(self) -> str:
        """How it ended, in a few words: `exit 1: RuntimeError: ...`, `killed by SIGKILL`, ..."""
        if self.spawn_error:
            return self.spawn_error
        if self.host_restart:
            return "the machine went down"
        if self.never_started:
            return "stopped before the job started"
        if self.lost:
            return "its monitor vanished without recording an exit"
        status = describe_exit(self.exit_code, self.signal)
        if self.exit_code not in (None, 0) and self.error_line:
            return f"{status}: {self.error_line}"
        return status


def observe(
    job: Job, attempt: Attempt, ended: EndedRecord | None, now: float, *, host_restart: bool = False,
) -> Observation:
    """Everything known about how `attempt` ended.

    Args:
        ended: the monitor's `ended.json`, None if there is none (the monitor vanished,
            was never started, or the machine went down).
        host_restart: the attempt belongs to an earlier boot.
    """
    run_dir = Path(attempt.run_dir)
    started = read_json(run_dir / STARTED_FILE) or {}
    launch = read_launch(run_dir)
    cgroup_path = Path(launch.cgroup) if launch and launch.cgroup else None
    common = dict(
        stop_requested=job.stop_requested,
        trainer_exit=read_trainer_exit(run_dir),
        log_tail=_tail(Path(attempt.log_path), LOG_TAIL_BYTES),
        hang_verdict=attempt.hang_verdict,
        job_pid=attempt.job_pid or started.get("job_pid"),
        checkpoints=_checkpoint_names(job),
        newest_write=newest_write(Path(job.checkpoint_dir)),
        cgroup=cgroup_path,
    )
    if ended is not None:
        return Observation(
            ended_at=ended.ended_at or now, exit_code=ended.exit_code, signal=ended.signal,
            spawn_error=ended.spawn_error, never_started=ended.never_started,
            oom_kills=cgroup.oom_kill_count(cgroup_path) if cgroup_path else None, **common,
        )
    if host_restart:
        return Observation(ended_at=_last_sign_of_life(attempt), host_restart=True, **common)
    # No record: a monitor we stopped (or never launched) before it started the job lost
    # nothing; one that vanished after starting it lost the attempt.
    never_started = not started and (job.stop_requested is not None or attempt.monitor_pid is None)
    return Observation(ended_at=now, never_started=never_started, lost=not never_started, **common)


def spawn_failure(job: Job, error: str, now: float) -> Observation:
    """The monitor process itself could not be started."""
    return Observation(ended_at=now, spawn_error=error, stop_requested=job.stop_requested,
                       checkpoints=_checkpoint_names(job), newest_write=newest_write(Path(job.checkpoint_dir)))


def _checkpoint_names(job: Job) -> tuple[str, ...]:
    resume = job.spec.resume
    return tuple(c.name for c in find_checkpoints(Path(job.checkpoint_dir), resume.checkpoint if resume else None))


def _shorten(text: str, limit: int = 300) -> str:
    """At most `limit` characters, cut between words, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"


def _last_sign_of_life(attempt: Attempt) -> float:
    """When an attempt cut off by a power loss last showed it was alive: its log or heartbeats."""
    paths = [Path(attempt.log_path), *Path(attempt.run_dir, HEARTBEAT_DIR).glob("rank-*.json")]
    times = [attempt.started_at]
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def _tail(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
