"""Starting an attempt's monitor, and the process seam the daemon acts through.

`Launcher` is everything the daemon does to or asks about monitor processes; the
daemon and `Attempts` take one, so tests drive them with a fake, without processes.
`ProcessLauncher` is the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from trainsup.contracts import (
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_HEARTBEAT,
    ENV_JOB_ID,
    ENV_JOB_NAME,
    ENV_RUN_DIR,
    HEARTBEAT_DIR,
    LAUNCH_FILE,
    LOCK_FILE,
    MONITOR_LOG,
    STARTED_FILE,
    LaunchRecord,
    clean_child_env,
    read_json,
)
from trainsup.durable import make_dirs, write_json_atomic
from trainsup.jobs.store import Job
from trainsup.supervisor import cgroup, host, standby
from trainsup.supervisor.monitor import STOP_SIGNALS  # blocked while a monitor starts: those it handles
from trainsup.supervisor.standby import Standby
from trainsup.supervisor.standby_process import python_entry

log = structlog.get_logger("trainsup.launcher")

ORPHAN_KILL_WAIT_S = 5.0
RECORD_TIMEOUT_S = 180.0
RECORD_NICENESS = 10


@dataclass(frozen=True)
class LaunchPlan:
    """Everything an attempt needs, decided by the daemon before it starts."""

    job: Job
    number: int
    run_dir: Path
    log_path: Path
    command: list[str]  # the spec's, with the resume arguments when a checkpoint exists
    batch_env: dict[str, str]
    gpu_env: dict[str, str]

    @property
    def heartbeat_dir(self) -> Path:
        return self.run_dir / HEARTBEAT_DIR


@dataclass
class MonitorHandle:
    """A monitor process the daemon watches: one it started, or one it re-adopted."""

    pid: int | None  # None: never launched (the launch hit a full disk)
    started: float | None  # its create time: with the pid, its identity
    pidfd: int | None = None  # readable when it exits
    process: subprocess.Popen | None = None  # set when this daemon started it

    def reap(self) -> None:
        if self.process is not None:
            self.process.poll()

    def close(self) -> None:
        self.reap()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Launcher(Protocol):
    def start(self, plan: LaunchPlan) -> MonitorHandle:
        """Write the launch file and start the monitor. Raises OSError if it cannot."""

    def attach(self, pid: int, started: float | None) -> MonitorHandle:
        """A handle on a running monitor this daemon did not start."""

    def is_alive(self, pid: int | None, started: float | None) -> bool:
        """Whether the monitor `pid`, started at `started`, still runs."""

    def find(self, run_dir: str) -> tuple[int, float] | None:
        """A live monitor serving `run_dir` (pid, create time), found without its pid."""

    def stop(self, monitor: MonitorHandle) -> None:
        """Ask the monitor to stop its job (stop signal, SIGKILL after the grace period)."""

    def start_standby(self, plan: LaunchPlan, preload: list[str] | None) -> Standby | None:
        """A warm standby that can become attempt `plan.number`, having imported `preload` (None:
        what the script imports); None if the command cannot have one. Raises OSError if it
        cannot be started."""

    def activate(self, standby: Standby, plan: LaunchPlan) -> MonitorHandle:
        """Write the launch file and make the standby the attempt. Raises OSError if it is gone."""

    def kill_orphaned_job(self, run_dir: Path) -> None:
        """The monitor is gone; kill a job it started that may still run."""


def attempt_environment(plan: LaunchPlan) -> dict[str, str]:
    """The submitting shell's environment, the spec's env on top, then ours."""
    env = dict(plan.job.environment)
    env.update(plan.job.spec.env)
    env = clean_child_env(env)
    env.update({
        ENV_JOB_ID: plan.job.id,
        ENV_JOB_NAME: plan.job.name,
        ENV_ATTEMPT: str(plan.number),
        ENV_RUN_DIR: str(plan.run_dir),
        ENV_CHECKPOINT_DIR: plan.job.checkpoint_dir,
        ENV_HEARTBEAT: str(plan.heartbeat_dir),
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    })
    env.update(plan.batch_env)
    env.update(plan.gpu_env)
    return env


def make_run_dir(plan: LaunchPlan) -> None:
    """The attempt's run dir (with its heartbeat dir) and the job's checkpoint dir."""
    make_dirs(plan.heartbeat_dir, 0o700)  # the job dir, the run dir, each made durable in its parent
    checkpoint_dir = Path(plan.job.checkpoint_dir)
    # The default checkpoint dir lies in the job dir, which is ours: private like it.
    private = checkpoint_dir.is_relative_to(plan.run_dir.parent)
    checkpoint_dir.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)


def write_launch_file(plan: LaunchPlan, cgroup_path: Path | None = None) -> None:
    """Create the run dir (if a standby has not) and the `launch.json` the monitor reads."""
    make_run_dir(plan)
    spec = plan.job.spec
    record = LaunchRecord(
        command=plan.command,
        cwd=str(spec.workdir) if spec.workdir else None,
        env=attempt_environment(plan),
        log_path=str(plan.log_path),
        lock_path=str(Path(plan.job.checkpoint_dir) / LOCK_FILE),
        grace_period=spec.grace_period,
        stop_signal=spec.stop_signal,
        cgroup=str(cgroup_path) if cgroup_path else None,
    )
    write_json_atomic(plan.run_dir / LAUNCH_FILE, record.to_json())


class ProcessLauncher:
    """Real monitor processes (`python -m trainsup.supervisor.monitor RUN_DIR`)."""

    def start(self, plan: LaunchPlan) -> MonitorHandle:
        write_launch_file(plan, _make_cgroup(plan))
        process = _spawn_monitor([str(plan.run_dir)], plan.run_dir / MONITOR_LOG)
        return MonitorHandle(process.pid, host.create_time(process.pid), host.open_pidfd(process.pid), process)

    def attach(self, pid: int, started: float | None) -> MonitorHandle:
        return MonitorHandle(pid, started, host.open_pidfd(pid))

    def start_standby(self, plan: LaunchPlan, preload: list[str] | None) -> Standby | None:
        spec = plan.job.spec
        environment = attempt_environment(plan)
        entry = python_entry(plan.command, environment.get("PATH"))
        if entry is None:
            return None
        # What activation would otherwise do while the restart waits: the attempt's run
        # dir, and its cgroup, which the standby joins now (moving a process later takes
        # milliseconds; its imports are then charged where they belong).
        make_run_dir(plan)
        cgroup_path = _make_cgroup(plan)
        try:
            directory = standby.prepare(plan.run_dir.parent, plan.number, entry.interpreter, plan.command,
                                        str(spec.workdir) if spec.workdir else None, environment, preload,
                                        cgroup_path)
            process, write_end = _spawn_standby_monitor(directory, plan.run_dir)
        except OSError:
            if cgroup_path is not None:
                cgroup.remove(cgroup_path)
            raise
        log.info("standby started", job=plan.job.id, attempt=plan.number, pid=process.pid)
        return Standby(plan.job.id, plan.number, plan.run_dir, process.pid, host.create_time(process.pid), write_end,
                       process, cgroup_path)

    def activate(self, waiting: Standby, plan: LaunchPlan) -> MonitorHandle:
        if not host.is_same_process(waiting.pid, waiting.started):
            raise OSError(f"the standby for attempt {waiting.number} is gone")
        write_launch_file(plan, waiting.cgroup)
        standby.activate(waiting)
        return MonitorHandle(waiting.pid, waiting.started, host.open_pidfd(waiting.pid), waiting.process)

    def is_alive(self, pid: int | None, started: float | None) -> bool:
        return host.is_same_process(pid, started)

    def find(self, run_dir: str) -> tuple[int, float] | None:
        process = host.find_monitor(run_dir)
        return (process.pid, process.create_time()) if process is not None else None

    def stop(self, monitor: MonitorHandle) -> None:
        if not host.is_same_process(monitor.pid, monitor.started):
            return
        try:
            os.kill(monitor.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill_orphaned_job(self, run_dir: Path) -> None:
        """Never let two attempts overlap: a job whose monitor died may still run."""
        started = read_json(run_dir / STARTED_FILE)
        if not started:
            return
        pid = started["job_pid"]
        created = host.create_time(pid)
        # A standby's process was created before the attempt started: its create time is recorded.
        if created is None or abs(created - (started.get("job_created_at") or started["started_at"])) > 2.0:
            return
        try:
            os.killpg(started["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + ORPHAN_KILL_WAIT_S
        while host.create_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)


def start_recorder(run_dir: Path, state_root: Path) -> None:
    """Write the attempt's `record.json` (`trainsup.record`) from a child process a thread waits for.

    Called once the job runs, so it never delays a start; it never blocks the daemon's loop.
    Nothing to record without a launch file (a launch that never happened, or a fake launcher).
    """
    if not (run_dir / LAUNCH_FILE).exists():
        return

    def run() -> None:
        try:
            with subprocess.Popen(
                    [sys.executable, "-m", "trainsup.record", str(run_dir), str(state_root / "cache")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    env=clean_child_env(os.environ), start_new_session=True) as process:
                _lower_priority(process.pid)  # bookkeeping: never slower restarts or training for it
                try:
                    _, errors = process.communicate(timeout=RECORD_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    raise
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("no run record", run_dir=str(run_dir), error=str(exc))
            return
        if process.returncode != 0:
            log.warning("no run record", run_dir=str(run_dir), exit_code=process.returncode,
                        output=errors.decode(errors="replace")[-500:])

    threading.Thread(target=run, name="record", daemon=True).start()


def _lower_priority(pid: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, RECORD_NICENESS)
    except OSError:
        pass  # already gone


def _spawn_standby_monitor(directory: Path, run_dir: Path) -> tuple[subprocess.Popen, int]:
    """The standby's monitor, and the write end of its lifeline (closing it ends the standby)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        process = _spawn_monitor(["--standby", str(directory), str(run_dir), str(read_end)],
                                 directory / MONITOR_LOG, pass_fds=(read_end,))
    except OSError:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return process, write_end


def _spawn_monitor(args: list[str], log_path: Path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """`python -m trainsup.supervisor.monitor ARGS…` in a session of its own, its output in `log_path`."""
    monitor_log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    # Blocked here, inherited blocked: a stop request that arrives before the monitor
    # has its handlers waits for them instead of killing it mid-start.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "trainsup.supervisor.monitor", *args],
            stdin=subprocess.DEVNULL, stdout=monitor_log, stderr=monitor_log, start_new_session=True,
            pass_fds=pass_fds, env=clean_child_env(os.environ),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        os.close(monitor_log)


def attempt_cgroup_name(job_id: str, number: int) -> str:
    """The name of attempt `number`'s memory cgroup, made under the daemon's own cgroup."""
    return f"trainsup-{job_id}-{number}"


def _make_cgroup(plan: LaunchPlan) -> Path | None:
    """A memory cgroup for the attempt (host OOM detection, `memory_limit`), where we can make one."""
    try:
        return cgroup.create_job_cgroup(attempt_cgroup_name(plan.job.id, plan.number), plan.job.spec.memory_limit)
    except cgroup.CgroupError as exc:
        log.warning("no cgroup for the attempt", job=plan.job.id, error=str(exc))
        return None
