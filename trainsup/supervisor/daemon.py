"""The supervisor daemon: one short loop of small steps.

    intake → poll attempts → release backoffs → start queued → report

The loop sleeps in select() on a wake-up pipe (inbox events, signals) and on a
pidfd per attempt monitor, so an exit is noticed within milliseconds.

A full disk under the state dir stops nothing that runs: each step that cannot write
is tried again on the next tick, the monitors keep their jobs (and wait to write
their records), nothing new starts, and the daemon says "disk full" in its log, its
systemd status and `disk-status` until a step succeeds with space to spare.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import psutil
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from trainsup import diskspace
from trainsup.contracts import open_lock_file, try_lock, write_owner
from trainsup.errors import DaemonAlreadyRunningError
from trainsup.gpu.probe import GpuProbe, probe_from_env
from trainsup.jobs import inbox
from trainsup.jobs.groups import group_of, limits_path, read_limits
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor import host
from trainsup.supervisor.attempts import Attempts
from trainsup.supervisor.clock import Clock, SystemClock
from trainsup.supervisor.gpus import GpuBook
from trainsup.supervisor.intake import Intake
from trainsup.supervisor.launcher import Launcher, ProcessLauncher
from trainsup.supervisor.notify import SystemdNotifier
from trainsup.supervisor.queue import Ask, Dependency, Holding, Machine, Queue, Verdict
from trainsup.supervisor.recovery import recover

log = structlog.get_logger("trainsup.daemon")

IDLE_WAKEUP_S = 1.0
SHUTDOWN_MARGIN_S = 15.0
LOCK_RETRY_S = 1.0
HEARTBEAT_POLL_S = 0.25
STARTING_POLL_S = 0.1
STARTING_WATCH_S = 5.0
STANDBY_EXIT_WAIT_S = 2.0  # at shutdown: dropped standbys exit, then their cgroups are removed
DISK_FULL_RETRY_S = 1.0


@dataclass
class DaemonLock:
    """An flock on the state dir held for the daemon's lifetime."""

    fd: int

    @classmethod
    def acquire(cls, state: StateDir) -> "DaemonLock":
        fd = open_lock_file(state.daemon_lock)
        # `trainsup status` probes the lock for an instant: retry briefly before refusing.
        deadline = time.monotonic() + LOCK_RETRY_S
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DaemonAlreadyRunningError(f"another trainsup daemon is already running for {state.root}.")
            time.sleep(0.05)
        write_owner(fd)
        return cls(fd)


class _WakeOnInbox(FileSystemEventHandler):
    def __init__(self, wake_fd: int):
        self.wake_fd = wake_fd

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            os.write(self.wake_fd, b"i")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway


class Daemon:
    """The loop. Its seams (clock, launcher, GPU probe, boot id) default to the real ones."""

    def __init__(
        self, state: StateDir, notifier: SystemdNotifier | None = None, *, clock: Clock | None = None,
        launcher: Launcher | None = None, probe: GpuProbe | None = None, boot_id: str | None = None,
    ):
        self.state = state
        self.notifier = notifier or SystemdNotifier.from_env()
        self.clock = clock or SystemClock()
        self.launcher = launcher or ProcessLauncher()
        self.probe = probe
        self.boot_id = boot_id
        self.shutdown_requested = False
        self.waiting: dict[str, str] = {}  # queued job id → the reason last recorded in its `waiting` event
        self.machine = Machine(os.cpu_count() or 1, psutil.virtual_memory().total)
        self.last_status = ""
        self.recovered = False
        self.disk_full_since: float | None = None  # wall clock; None while every write succeeds
        self.disk_error: BaseException | None = None  # the last write that failed for lack of space
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        faulthandler.enable()  # a watchdog SIGABRT leaves every thread's stack in the journal
        self.state.ensure()
        self.lock = DaemonLock.acquire(self.state)
        self.state.make_private()
        self.disk_status = diskspace.DiskStatus(self.state.disk_status)
        try:
            self.disk_status.prepare()
        except OSError as exc:
            log.warning("cannot write the disk-status file", path=str(self.state.disk_status), error=str(exc))
        self.store = Store.open(self.state.db)
        self.gpus = GpuBook(self.probe or probe_from_env(os.environ), self.clock)
        self.attempts = Attempts(self.store, self.state, self.boot_id or host.boot_id(), self.gpus,
                                 self.launcher, self.clock)
        self.intake = Intake(self.store, self.state, self.attempts)
        self._install_signal_handlers()
        observer = Observer()
        observer.schedule(_WakeOnInbox(self.wake_write), str(self.state.inbox), recursive=False)
        observer.start()
        try:
            inbox.remove_stale_temp_files(self.state.inbox)
            self.step()
            self.notifier.ready(self._status_line())
            log.info("daemon ready", state_dir=str(self.state.root), pid=os.getpid())
            while not self.shutdown_requested:
                self._wait(self._next_timeout())
                self.step()
            self._shut_down()
        finally:
            observer.stop()
            observer.join(timeout=5)
            self.store.close()
        return 0

    def step(self) -> None:
        """One pass. A part that fails for lack of space is retried next time; the others still run."""
        now = self.clock.time()
        wrote = self.recovered or self._try(self._recover, now)
        if wrote:  # until recovery is recorded, this daemon knows nothing to act on
            wrote &= self._try(self.intake.ingest_all, now)
            wrote &= self._try(self.attempts.poll, now)
            wrote &= self._try(self.attempts.watch, now)
            if not self.shutdown_requested:
                self._try(self.attempts.prepare_standbys, now)
            self.gpus.settle_releases(self.clock.monotonic())
            wrote &= self._try(self._release_backoffs, now)
            if wrote and self.disk_full_since is not None:
                wrote = self._space_is_back()
        self._note_disk(wrote, now)
        if wrote and not self.shutdown_requested:
            # a fresh reading: an attempt must not be recorded as started before the ends
            # this pass just saw (a job that exited during the pass would seem to overlap it)
            self._note_disk(self._try(self._start_queued, self.clock.time()), now)
        status = self._status_line()
        if status != self.last_status:
            self.notifier.status(status)
            self.last_status = status
        self.notifier.watchdog()

    def _recover(self, now: float) -> None:
        recover(self.store, self.attempts, now)
        self.recovered = True

    def _try(self, part: Callable[[float], object], now: float) -> bool:
        """Run one part of the step; False if it could not write for lack of space."""
        try:
            part(now)
        except Exception as exc:
            if not diskspace.is_disk_full(exc):
                raise
            self.disk_error = exc
            return False
        return True

    def _space_is_back(self) -> bool:
        """Every write went through: leave disk-full mode once there is room to spare, too."""
        free = diskspace.free_bytes(self.state.root)
        return free is None or free >= diskspace.FULL_BELOW_BYTES

    def _note_disk(self, wrote: bool, now: float) -> None:
        if not wrote and self.disk_full_since is None:
            self.disk_full_since = now
            log.error("disk full: cannot write to the state dir; supervising the running jobs, starting"
                      " nothing new, retrying every second", state_dir=str(self.state.root),
                      error=str(self.disk_error), free_bytes=diskspace.free_bytes(self.state.root),
                      running=len(self.attempts.live))
            self.disk_status.report(True, now, str(self.disk_error))
        elif wrote and self.disk_full_since is not None:
            log.warning("disk space is back: carrying on", state_dir=str(self.state.root),
                        full_for_s=round(now - self.disk_full_since, 1))
            self.disk_full_since = None
            self.disk_status.report(False)

    def _release_backoffs(self, now: float) -> None:
        for job in self.store.jobs({JobState.BACKOFF}):
            if job.next_start_at is None or job.next_start_at <= now:
                with self.store.transaction():
                    self.store.set_state(job.id, JobState.BACKOFF, JobState.QUEUED, now, "backoff_over",
                                         "backoff over: queued to start", next_start_at=None)

    def _start_queued(self, now: float) -> None:
        """Start what fits, highest priority first (supervisor/queue.py decides); say why the rest waits."""
        queued = {job.id: job for job in self.store.jobs({JobState.QUEUED})}
        self.waiting = {job_id: reason for job_id, reason in self.waiting.items() if job_id in queued}
        if not queued:
            return
        live = self.store.jobs({JobState.STARTING, JobState.RUNNING, JobState.STOPPING})
        queue = Queue([Holding(group_of(j.spec.group, j.spec.gpus), j.spec.cpus, j.spec.memory or 0) for j in live],
                      read_limits(limits_path(self.state.root)), self.machine)
        for ask in queue.order(Ask.of(job.id, job.submitted_at, job.spec) for job in queued.values()):
            job = queued[ask.id]
            min_free = job.spec.min_free_memory
            if ask.gpus and (impossible := self.gpus.impossible(ask.gpus, min_free)):
                verdict = Verdict("fail", impossible, "unplaceable")
            else:
                verdict = queue.verdict(ask, self._dependencies(ask.after), now)
            if verdict.action == "fail":
                with self.store.transaction():
                    self.store.set_state(job.id, JobState.QUEUED, JobState.FAILED, now, verdict.kind,
                                         verdict.message, result=verdict.message)
                continue
            if verdict.action == "wait":
                self._note_waiting(job.id, verdict.message, now)
                continue
            granted = self.gpus.grant(job.id, ask.gpus, min_free)
            if granted is None:
                self._note_waiting(job.id, f"waiting for {ask.gpus} free GPU(s)", now)
                continue
            self.waiting.pop(job.id, None)
            queue.take(ask)
            self.attempts.start(job, granted, now)

    def _dependencies(self, keys: tuple[str, ...]) -> dict[str, Dependency]:
        found = {}
        for key in keys:
            job = self.store.job(key)
            found[key] = Dependency(key, job.name if job else None, str(job.state) if job else None)
        return found

    def _note_waiting(self, job_id: str, message: str, now: float) -> None:
        if self.waiting.get(job_id) != message:
            self.store.add_event(job_id, "waiting", message, now)
            self.waiting[job_id] = message

    def _next_timeout(self) -> float:
        if self.disk_full_since is not None:
            # Due backoffs and exited monitors wait for space: retry at a steady pace, not at once.
            interval = self.notifier.watchdog_interval
            return DISK_FULL_RETRY_S if interval is None else min(DISK_FULL_RETRY_S, interval)
        now = self.clock.time()
        timeout = IDLE_WAKEUP_S if not self.waiting else min(IDLE_WAKEUP_S, 0.5)
        if any(not a.started_seen and now - a.started_at < STARTING_WATCH_S for a in self.attempts.live.values()):
            # See a new attempt run soon: `status` says so, and its standby can start (attempts.py).
            timeout = min(timeout, STARTING_POLL_S)
        if any(a.hang_tracker and a.hang_tracker.ever_beat for a in self.attempts.live.values()):
            # Sample heartbeats often enough to learn the job's own interval, not our tick.
            timeout = min(timeout, HEARTBEAT_POLL_S)
        if (interval := self.notifier.watchdog_interval) is not None:
            timeout = min(timeout, interval)
        for job in self.store.jobs({JobState.BACKOFF}):
            if job.next_start_at is not None:
                timeout = min(timeout, max(0.0, job.next_start_at - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        fds = [self.wake_read]
        if self.disk_full_since is None:  # an exited monitor whose end cannot be recorded yet stays readable
            fds += [a.monitor.pidfd for a in self.attempts.live.values() if a.monitor.pidfd is not None]
        select.select(fds, [], [], timeout)
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)

        def request_shutdown(signum: int, frame: object) -> None:
            self.shutdown_requested = True

        signal.signal(signal.SIGTERM, request_shutdown)
        signal.signal(signal.SIGINT, request_shutdown)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() via the wakeup fd

    def _shut_down(self) -> None:
        """Ask every job to checkpoint and stop; wait for them within their grace periods."""
        live_jobs = [self.store.job(job_id) for job_id in self.attempts.live]
        self.notifier.stopping()
        self.attempts.drop_standbys(wait_s=STANDBY_EXIT_WAIT_S)
        grace = max((j.spec.grace_period for j in live_jobs), default=0.0)
        self.notifier.extend_timeout(grace + SHUTDOWN_MARGIN_S)
        log.info("shutting down", running=len(live_jobs), grace_period=grace)
        now = self.clock.time()
        for job in live_jobs:
            if self._try(partial(self._stop_for_shutdown, job), now):
                self.attempts.request_stop(job.id)
            else:  # a stop we cannot record would read as a crash: leave it to the next daemon
                log.warning("disk full: leaving the job running for the next daemon", job=job.id)
                self.attempts.live.pop(job.id).monitor.close()
        deadline = self.clock.monotonic() + grace + SHUTDOWN_MARGIN_S
        while self.attempts.live and self.clock.monotonic() < deadline:
            self._wait(min(1.0, max(0.0, deadline - self.clock.monotonic())))
            self._try(self.attempts.poll, self.clock.time())
        if self.attempts.live:
            log.warning("jobs still running at exit; the next daemon re-adopts them", jobs=list(self.attempts.live))
        log.info("daemon stopped")

    def _stop_for_shutdown(self, job: Job, now: float) -> None:
        message = "the daemon is stopping: asking the job to checkpoint and exit"
        reason = {} if job.stop_requested else {"stop_requested": "shutdown"}
        with self.store.transaction():
            if job.state is JobState.STOPPING:
                if reason:
                    self.store.update_job(job.id, **reason)
                self.store.add_event(job.id, "daemon_stopping", message, now)
            else:
                self.store.set_state(job.id, job.state, JobState.STOPPING, now, "daemon_stopping", message, **reason)

    def _status_line(self) -> str:
        counts = self.store.count_by_state()
        running = counts.get("running", 0) + counts.get("starting", 0)
        waiting = counts.get("queued", 0) + counts.get("backoff", 0)
        line = f"{running} running, {waiting} waiting"
        return line if self.disk_full_since is None else f"disk full, starting nothing new; {line}"
