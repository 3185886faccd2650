"""`trainsup run job.yaml`: one job supervised in the foreground, without a daemon.

The daemon's own loop (supervisor/daemon.py) on a private state dir holding this one
job: the job file goes in through the normal intake path, and the same monitor,
classification, restart policy, OOM backoff and hang detection apply. The loop ends
when the job does (exit 0 succeeded, 1 failed or cancelled) or when a signal stops it:

    SIGUSR1          Slurm's time limit (`--signal=B:USR1@S`): checkpoint, stop, requeue
    SIGTERM          in Slurm: at the time limit (no USR1 came in time) or on preemption, as
                     SIGUSR1; otherwise it is `scancel`, which cancels the job
                     outside Slurm: checkpoint and stop, like SIGINT
    SIGINT           checkpoint and stop; `trainsup run` again resumes it

A stop asks the job to checkpoint (its stop_signal, SIGKILL after grace_period), waits
for it, and exits 75; inside Slurm it first requeues the Slurm job (`scontrol requeue`),
which starts again in a new allocation from the job's checkpoint.

stdout carries the job's log across attempts (one separator line per attempt) and
trainsup's events (`trainsup: ...`), so Slurm's output file holds one log across
attempts and requeues; trainsup's own structured log goes to `run.log` in the state dir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

import structlog

from trainsup.commands import logs
from trainsup.commands.common import daemon_running
from trainsup.errors import DaemonAlreadyRunningError, SlurmError, SpecError, TrainsupError
from trainsup.jobs import inbox
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Store
from trainsup.paths import StateDir
from trainsup.gpu.probe import GpuProbe
from trainsup.slurm import cluster
from trainsup.slurm.gpus import allocated_probe
from trainsup.slurm.records import RunReport, read_report, write_report
from trainsup.supervisor.daemon import Daemon
from trainsup.supervisor.notify import SystemdNotifier

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped before it finished; it resumes from its checkpoint
SLURM_QUERY_S = 5.0


def default_state_dir(spec_path: Path, environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Node-local: `$TMPDIR/trainsup-run-<uid>/`, then `slurm-<cluster>-<id>` inside Slurm, else one per job file."""
    base = Path(environ.get("TMPDIR") or "/tmp") / f"trainsup-run-{os.getuid()}"
    if slurm_id := environ.get("SLURM_JOB_ID"):
        cluster_name = environ.get("SLURM_CLUSTER_NAME") or "slurm"
        return base / f"slurm-{cluster_name}-{slurm_id}"
    key = hashlib.sha256(str(spec_path.resolve()).encode()).hexdigest()[:10]
    return base / f"{spec_path.stem}-{key}"


def _own_folder(path: Path) -> None:
    """Make `path` (a folder of ours, 0700); refuse one that someone else made or that is a link."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise TrainsupError(f"cannot make the state folder {path}: {exc.strerror or exc}.") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise TrainsupError(f"{path} is not a folder of yours; give another with --state.")


class ForegroundRun(Daemon):
    """The daemon's loop for one job, ending with it; stdout gets its log."""

    def __init__(self, state: StateDir, job_id: str, out: TextIO, report_path: Path | None,
                 slurm_id: str | None, allocation: int, attempts_before: int, probe: GpuProbe | None = None):
        super().__init__(state, SystemdNotifier(), probe=probe)
        self.job_id = job_id
        self.out = out
        self.report_path = report_path
        self.slurm_id = slurm_id
        self.allocation = allocation
        self.attempts_before = attempts_before
        self.signals: list[int] = []
        self.stop: str | None = None  # requeue, stop or cancel
        self.shown = 0  # attempts whose log was copied out in full
        self.offset = 0
        self.announced = False
        self.events_shown = 0
        self.last_report: RunReport | None = None

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, lambda number, frame: self.signals.append(number))

    def step(self) -> None:
        while self.signals:
            self._on_signal(self.signals.pop(0))
        super().step()
        self.stream(self.store)
        job = self.store.job(self.job_id)
        self.report(job.state, job.result)
        if job.state.is_terminal:
            self.shutdown_requested = True

    def _on_signal(self, signum: int) -> None:
        if self.stop is not None:
            return  # already stopping: the stop path runs its course (grace_period, then SIGKILL)
        name = signal.Signals(signum).name
        if self.slurm_id is None or signum == signal.SIGINT:
            self.stop = "stop"
        elif signum == signal.SIGTERM:
            self.stop = self._why_slurm_terminates()
        else:
            self.stop = "requeue"
        if self.stop == "cancel":
            self.say(f"{name}: the Slurm job was cancelled: cancelling the job")
            inbox.drop(self.state.inbox, {"kind": "control", "job_id": self.job_id, "action": "cancel",
                                          "requested_at": time.time()})
            return
        then = "requeue the Slurm job" if self.stop == "requeue" else "exit; run it again to resume"
        self.say(f"{name}: asking the job to checkpoint and stop, then {then}")
        self.shutdown_requested = True

    def _why_slurm_terminates(self) -> str:
        """Slurm's SIGTERM: the time limit or a preemption (requeue), else `scancel` (cancel).

        While Slurm kills a job, scontrol says COMPLETING whatever the cause, so the time
        limit is told by the job's run time; without an answer the job is only stopped.
        """
        try:  # quickly: Slurm SIGKILLs the job KillWait (30 s by default) after this SIGTERM
            found = cluster.info(self.slurm_id, timeout=SLURM_QUERY_S)
        except SlurmError:
            found = None
        if found is None:
            return "stop"
        if found.at_time_limit or found.state in ("PREEMPTED", "TIMEOUT"):
            return "requeue"
        return "cancel"

    # --- output ------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"trainsup: {text}", file=self.out, flush=True)

    def stream(self, store: Store) -> None:
        """Copy out what the job wrote since the last call, and trainsup's new events."""
        events = store.events(self.job_id)
        for event in events[self.events_shown:]:
            if event.kind not in ("attempt_started", "attempt_running", "waiting"):
                self.say(f"{event.kind}: {event.message}")
        self.events_shown = len(events)
        attempts = store.attempts(self.job_id)
        while self.shown < len(attempts):
            current = attempts[self.shown]
            if not self.announced:
                previous = attempts[self.shown - 1] if self.shown else None
                print(logs.separator(self._numbered(current), previous and self._numbered(previous)),
                      file=self.out, flush=True)
                self.announced = True
            self._copy(Path(current.log_path))
            if current.ended_at is None:
                return
            self._copy(Path(current.log_path))
            self.shown, self.offset, self.announced = self.shown + 1, 0, False

    def _numbered(self, attempt):
        return dataclasses.replace(attempt, number=attempt.number + self.attempts_before)

    def _copy(self, path: Path) -> None:
        try:
            with open(path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        if data:
            self.out.write(data.decode(errors="replace"))
            self.out.flush()
            self.offset += len(data)

    def report(self, state: str, result: str | None) -> None:
        """Rewrite the report file when something in it changed."""
        if self.report_path is None:
            return
        attempts = self.store.attempts(self.job_id)
        report = RunReport(
            job_id=self.job_id, name=self.store.job(self.job_id).name, state=str(state),
            attempt=self.attempts_before + len(attempts), last_reason=_last_reason(attempts), result=result,
            node=socket.gethostname().split(".")[0], slurm_id=self.slurm_id, allocation=self.allocation,
            attempts_before=self.attempts_before, stop=self.stop, state_dir=str(self.state.root),
            updated_at=time.time())
        if self.last_report is None or report.model_copy(update={"updated_at": 0}) != \
                self.last_report.model_copy(update={"updated_at": 0}):
            try:
                write_report(self.report_path, report)
            except OSError as exc:
                self.say(f"cannot write the report {self.report_path}: {exc.strerror or exc}")
            self.last_report = report


def _last_reason(attempts: list) -> str | None:
    ended = [a for a in attempts if a.reason is not None]
    return str(ended[-1].reason) if ended else None


def run(spec_path: Path, name: str | None, state_dir: Path | None, report_path: Path | None, again: bool,
        fresh: bool, out: TextIO | None = None, environ: dict[str, str] | os._Environ = os.environ) -> int:
    """Supervise the job in `spec_path` until it ends or is stopped; return the exit status.

    Raises:
        SpecError: a bad job file, or a sweep (one job at a time here).
        DaemonAlreadyRunningError: another `trainsup run` or daemon holds the state dir.
    """
    from trainsup.commands import submit as submit_command

    out = out or sys.stdout
    if submit_command.sweep_of(spec_path, name) is not None:
        raise SpecError(f"{spec_path} is a sweep: trainsup run takes one job; `trainsup submit` queues a sweep.")
    state_root = (state_dir or default_state_dir(spec_path, environ)).absolute()
    if state_dir is None:
        _own_folder(state_root.parent)  # in a shared $TMPDIR: not one another user made for us
    _own_folder(state_root)
    state = StateDir(state_root)
    if daemon_running(state):  # refused before anything is submitted into its inbox
        raise DaemonAlreadyRunningError(f"another trainsup run or daemon is already running for {state.root}.")
    existing = None if (again or fresh) else submit_command.existing_run(state, spec_path, name)
    if existing is not None and existing[1] == JobState.SUCCEEDED:
        print(f"trainsup: this job already succeeded as {existing[0]} in {state.root} (--again runs it once more)",
              file=out, flush=True)
        return 0
    if existing is not None:
        job_id = existing[0]
    else:
        job_id = submit_command.submit(spec_path, name, fresh, state).job_id
    slurm_id = environ.get("SLURM_JOB_ID") or None
    allocation = int(environ.get("SLURM_RESTART_COUNT") or 0) + 1
    previous = read_report(report_path) if report_path is not None else None
    attempts_before = 0
    if previous is not None and previous.slurm_id == slurm_id:
        # A fresh state dir (another node) starts counting again; one carried over still counts.
        attempts_before = previous.attempts_before if previous.state_dir == str(state.root) and existing \
            else previous.attempt
    _log_to_file(state.root / "run.log")
    where = f"Slurm job {slurm_id}, allocation {allocation} on {socket.gethostname().split('.')[0]}" \
        if slurm_id else f"pid {os.getpid()}"
    print(f"trainsup: running job {job_id} ({'resumed' if existing else 'submitted'}) in the foreground; "
          f"{where}; state in {state.root}", file=out, flush=True)
    runner = ForegroundRun(state, job_id, out, report_path, slurm_id, allocation, attempts_before,
                           allocated_probe(environ))
    if existing is not None and (store := Store.open_readonly(state.db)) is not None:
        try:  # what an earlier run printed already
            runner.shown, runner.events_shown = len(store.attempts(job_id)), len(store.events(job_id))
        finally:
            store.close()
    runner.run()
    return _finish(runner)


def _finish(runner: ForegroundRun) -> int:
    store = Store.open_readonly(runner.state.db)
    try:
        runner.store = store
        runner.stream(store)
        job = store.job(runner.job_id)
        stop = runner.stop if not job.state.is_terminal else None
        runner.report("stopping" if stop == "requeue" else job.state, job.result)
    finally:
        store.close()
    if job.state.is_terminal:
        print(logs.outcome(job.state, job.result), file=runner.out, flush=True)
        if job.state is JobState.FAILED and runner.slurm_id:
            _comment(runner, f"trainsup: failed: {job.result}")
        return 0 if job.state is JobState.SUCCEEDED else 1
    if stop == "requeue":
        runner.say(f"job {job.state}: requeueing Slurm job {runner.slurm_id}; it resumes from its checkpoint "
                    "in a new allocation")
        try:
            cluster.requeue(runner.slurm_id)
        except SlurmError as exc:
            runner.say(f"could not requeue: {exc} Submit it again to resume.")
            _comment(runner, "trainsup: stopped for the time limit, but scontrol requeue failed")
    else:
        runner.say(f"job {job.state}: stopped; `trainsup run` with the same job file resumes it")
    return EXIT_STOPPED


def _comment(runner: ForegroundRun, text: str) -> None:
    try:
        cluster.set_comment(runner.slurm_id, text)
    except SlurmError as exc:
        runner.say(f"could not leave a comment on the Slurm job: {exc}")


def _log_to_file(path: Path) -> None:
    """trainsup's structured log into the state dir: stdout is the job's."""
    handle = open(path, "a", buffering=1)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(handle),
        cache_logger_on_first_use=True,
    )
