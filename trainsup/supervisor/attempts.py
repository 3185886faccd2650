"""Starting attempts, watching them, and what happens when one ends.

An ending always takes the same path:

    observe()  → Observation   what was seen (observation.py; reads only)
    classify() → EndReason     why it ended (classify.py; pure)
    decide()   → Decision      what comes next, with the batch to use (policy.py; pure)
    _apply()                   the only step with effects: one transaction that records
                               the end, the new batch and the new state, each with its event
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import structlog

from trainsup.batch import Batch
from trainsup.cleanup import keep_attempts, prune_attempts
from trainsup.contracts import RESUME_FILE, STARTED_FILE, EndedRecord, read_ended, read_json
from trainsup.diskspace import is_disk_full
from trainsup.layouts import FoundCheckpoint, newest_checkpoint, newest_write, quarantine
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Attempt, HeartbeatCalibration, Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor import cgroup, hangs
from trainsup.supervisor.classify import classify
from trainsup.supervisor.clock import Clock, SystemClock
from trainsup.supervisor.gpus import GpuBook, process_tree
from trainsup.supervisor.hang_policy import HangTracker, new_attempt
from trainsup.supervisor.launcher import Launcher, LaunchPlan, MonitorHandle, attempt_cgroup_name, start_recorder
from trainsup.supervisor.live import LiveAttempt
from trainsup.supervisor.notifier import Notifier
from trainsup.supervisor.observation import Observation, observe, spawn_failure
from trainsup.supervisor.placement import gpu_env
from trainsup.supervisor.policy import Action, Decision, decide, records_of
from trainsup.supervisor.standby import Standby, standby_of

log = structlog.get_logger("trainsup.attempts")

# A standby for a fresh attempt starts once the job is past its own imports, not during them.
STANDBY_AFTER_S = 5.0
# States in which a job will (or may) start another attempt: its standby is kept.
STANDBY_STATES = frozenset({JobState.RUNNING, JobState.STARTING, JobState.QUEUED, JobState.BACKOFF})

TARGET_STATE = {
    Action.SUCCEED: JobState.SUCCEEDED,
    Action.FAIL: JobState.FAILED,
    Action.CANCEL: JobState.CANCELLED,
    Action.REQUEUE: JobState.QUEUED,
    Action.HOLD: JobState.HELD,
}


class Attempts:
    """Owns the live attempts of every job."""

    def __init__(
        self, store: Store, state: StateDir, boot_id: str, gpus: GpuBook, launcher: Launcher,
        clock: Clock | None = None, rng: random.Random | None = None, notifier: Notifier | None = None,
    ):
        self.store = store
        self.state = state
        self.boot_id = boot_id
        self.gpus = gpus
        self.launcher = launcher
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.notifier = notifier or Notifier()
        self.live: dict[str, LiveAttempt] = {}
        self.standbys: dict[str, Standby] = {}  # job id → the standby for its next attempt
        self.cgroups_to_remove: list[Path] = []
        self.records_due: list[Path] = []  # run dirs whose record.json is gathered at the next poll

    # --- start -------------------------------------------------------------------

    def start(self, job: Job, gpu_uuids: list[str], now: float) -> None:
        """Record attempt N as starting, then launch its monitor.

        Raises:
            OSError, sqlite3.Error: the disk is full (`diskspace.is_disk_full`). If the
                attempt was recorded but not launched, it is watched without a monitor,
                so the next poll ends it as interrupted and requeues the job.
        """
        try:
            attempt, plan = self._record_start(job, gpu_uuids, now)
        except BaseException:
            self.gpus.release_after(job.id, set(), self.clock.monotonic())  # granted, never used
            raise
        try:
            monitor = self._launch(plan)
        except OSError as exc:
            if is_disk_full(exc):
                self.watch_attempt(attempt, MonitorHandle(pid=None, started=None))
                raise
            self.gpus.release_after(job.id, set(), self.clock.monotonic())
            self._settle(self.store.job(job.id), attempt, spawn_failure(job, f"cannot start the monitor: {exc}", now), now)
            return
        self.watch_attempt(attempt, monitor)
        log.info("attempt started", job=job.id, name=job.name, attempt=attempt.number, monitor_pid=monitor.pid)
        # On a full disk this waits for _note_started, which records the monitor too.
        self.store.update_attempt(job.id, attempt.number, monitor_pid=monitor.pid, monitor_started=monitor.started)

    def _launch(self, plan: LaunchPlan) -> MonitorHandle:
        """The job's standby becomes the attempt if it waits for this one; else a fresh monitor."""
        standby = self.standbys.pop(plan.job.id, None)
        if standby is not None and standby.run_dir != plan.run_dir:
            self._discard(standby)
        elif standby is not None:
            try:
                return self.launcher.activate(standby, plan)
            except OSError as exc:
                if is_disk_full(exc):
                    raise
                log.info("standby not used", job=plan.job.id, attempt=plan.number, error=str(exc))
            standby.drop()  # its run dir and cgroup are this attempt's: a fresh monitor uses them
        return self.launcher.start(plan)

    def _record_start(self, job: Job, gpu_uuids: list[str], now: float) -> tuple[Attempt, LaunchPlan]:
        number = len(self.store.attempts(job.id)) + 1
        batch = self._batch_for(job)
        resume = job.spec.resume
        found = newest_checkpoint(Path(job.checkpoint_dir), resume.checkpoint if resume else None)
        resume_args = _resume_args(job, found)
        plan = self._plan(job, number, batch, resume_args, gpu_uuids)
        attempt = Attempt(
            job_id=job.id, number=number, run_dir=str(plan.run_dir), log_path=str(plan.log_path),
            boot_id=self.boot_id, started_at=now, monitor_pid=None, monitor_started=None,
            job_pid=None, ended_at=None, exit_code=None, signal=None, reason=None, detail=None,
            checkpoint_before=found.name if found else None, checkpoint_after=None,
            batch=batch, peak_gpu_memory=None, gpu_uuids=gpu_uuids or None,
            newest_write_before=newest_write(Path(job.checkpoint_dir)),
        )
        message = _start_message(number, found, resume_args, batch, gpu_uuids, now)
        with self.store.transaction():
            self.store.insert_attempt(attempt)
            self.store.set_state(job.id, JobState.QUEUED, JobState.STARTING, now, "attempt_started", message)
        prune_attempts(self.state.job_dir(job.id), number, keep_attempts())
        return attempt, plan

    def _plan(self, job: Job, number: int, batch: Batch | None, resume_args: list[str],
              gpu_uuids: list[str]) -> LaunchPlan:
        return LaunchPlan(
            job=job, number=number,
            run_dir=self.state.run_dir(job.id, number),
            log_path=self.state.attempt_log(job.id, number),
            command=[*job.spec.command, *resume_args],
            batch_env=batch.to_env() if batch else {},
            gpu_env=gpu_env(gpu_uuids) if gpu_uuids else {},
        )

    def watch_attempt(self, attempt: Attempt, monitor: MonitorHandle) -> LiveAttempt:
        """Watch an attempt: one this daemon just started, or one it re-adopts."""
        job = self.store.job(attempt.job_id)
        calibration = self.store.heartbeat_calibration(job.id)
        tracker = HangTracker(gaps=calibration.gaps, longest_gap=calibration.longest_gap,
                              ever_beat=calibration.ever_beat) if calibration else HangTracker()
        if (watched := self.live.get(job.id)) is not None:
            watched.monitor.close()  # adopted again by a recovery retried after a full disk
        live = LiveAttempt(
            job_id=job.id, number=attempt.number, run_dir=Path(attempt.run_dir), log_path=Path(attempt.log_path),
            monitor=monitor, started_at=attempt.started_at, spec=job.spec,
            hang_tracker=new_attempt(tracker, attempt.started_at),
            gpu_uuids=attempt.gpu_uuids or [], job_pid=attempt.job_pid,
        )
        self.live[job.id] = live
        self.gpus.adopt(job.id, live.gpu_uuids, job.spec.min_free_memory)
        return live

    def _batch_for(self, job: Job) -> Batch | None:
        """The batch in force: the job's current one, else what worked before, else the spec's."""
        wanted = job.spec.batch_size
        if wanted is None:
            return None
        if job.batch:
            return job.batch
        remembered = self.store.remembered_micro(job.name, wanted.global_)
        batch = Batch.of_global(wanted.global_, min(wanted.micro, remembered or wanted.micro))
        self.store.update_job(job.id, batch=batch)
        return batch

    # --- observe -----------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Record every attempt that has started or ended since the last poll."""
        for run_dir in self.records_due:  # queued by the last poll: never before a restart it decided
            start_recorder(run_dir, self.state.root)
        self.records_due = []
        for live in list(self.live.values()):
            self._poll_one(live, now)
        self._remove_empty_cgroups()

    def _poll_one(self, live: LiveAttempt, now: float) -> None:
        live.monitor.reap()
        ended = read_ended(live.run_dir)
        if ended is None and not live.started_seen:
            self._note_started(live, now)
        if not live.resume_seen:
            self._note_resumed(live, now)
        if ended is None and not self.launcher.is_alive(live.monitor.pid, live.monitor.started):
            ended = read_ended(live.run_dir)  # it may have written it just before exiting
            if ended is None:
                self.finish(live.job_id, live.number, None, now)
                return
        if ended is not None:
            self.finish(live.job_id, live.number, ended, now)

    def _note_started(self, live: LiveAttempt, now: float) -> None:
        started = read_json(live.run_dir / STARTED_FILE)
        if started is None:
            return
        job_pid = started["job_pid"]
        job = self.store.job(live.job_id)
        live.warm = started.get("standby") == "used"
        message = f"attempt {live.number} running as pid {job_pid}" + _standby_note(started.get("standby"))
        with self.store.transaction():
            self.store.update_attempt(live.job_id, live.number, job_pid=job_pid, monitor_pid=live.monitor.pid,
                                      monitor_started=live.monitor.started)
            if job.state is JobState.STARTING:
                self.store.set_state(job.id, JobState.STARTING, JobState.RUNNING, now, "attempt_running", message)
            else:
                self.store.add_event(job.id, "attempt_running", message, now)
        live.started_seen = True
        live.job_pid = job_pid
        self.records_due.append(live.run_dir)

    def _note_resumed(self, live: LiveAttempt, now: float) -> None:
        """What the trainer library really started from, and what it passed over (resume.json)."""
        record = read_json(live.run_dir / RESUME_FILE)
        if not isinstance(record, dict):
            return
        skipped = [s for s in record.get("skipped") or [] if isinstance(s, dict)]
        if record.get("select") == "snapshot":
            newer = f", newer than disk {record['disk']}" if record.get("disk") else ", no disk checkpoint yet"
            started = f"resumed from its in-memory snapshot at step {record.get('step')}{newer}"
        else:
            started = f"resumed from {record['checkpoint']}" if record.get("checkpoint") else "started fresh"
        passed = "; ".join(f"skipped {s.get('checkpoint')}: {s.get('why')}" for s in skipped)
        self.store.add_event(live.job_id, "resumed", f"attempt {live.number} {started}"
                                                     + (f" ({passed})" if passed else ""), now)
        live.resume_seen = True

    def watch(self, now: float) -> None:
        """Hang detection and GPU memory sampling for every running attempt."""
        for live in list(self.live.values()):
            if live.job_pid is None or live.hung:
                continue
            live.hang_tracker, verdict = hangs.check(
                live.hang_tracker, live.spec.heartbeat, live.run_dir, live.log_path, live.started_at, now)
            if verdict is not None:
                with self.store.transaction():  # recorded first, so that its end reads as a hang
                    self.store.update_attempt(live.job_id, live.number, hang_verdict=verdict.describe())
                    self.store.add_event(live.job_id, "hang", f"attempt {live.number} hung: {verdict.describe()}", now)
                live.hung = True
                hangs.kill_hung(live.run_dir, live.job_pid, verdict)
            if live.gpu_uuids:
                self._sample_gpu_memory(live)

    def prepare_standbys(self, now: float) -> None:
        """A warm standby for each running job that has none (docs/standby.md);
        standbys of jobs that will not start again are dropped."""
        for job_id in [j for j in self.standbys if j not in self.live]:
            job = self.store.job(job_id)  # None: removed
            if job is None or job.state not in STANDBY_STATES:
                self.drop_standby(job_id)
        for live in self.live.values():
            if live.standby_tried or not live.started_seen or live.job_id in self.standbys:
                continue
            if not live.warm and now - live.started_at < STANDBY_AFTER_S:
                continue  # a fresh job is importing what the standby would: do not compete
            live.standby_tried = True
            job = self.store.job(live.job_id)
            wanted = standby_of(job.spec)
            if not wanted.enabled or job.state is not JobState.RUNNING:
                continue
            plan = self._plan(job, live.number + 1, job.batch, [], [])
            try:
                standby = self.launcher.start_standby(plan, wanted.preload)
            except OSError as exc:
                log.warning("no standby", job=job.id, error=str(exc))
                continue
            if standby is not None:
                self.standbys[job.id] = standby

    def drop_standby(self, job_id: str) -> None:
        standby = self.standbys.pop(job_id, None)
        if standby is not None:
            self._discard(standby)

    def _discard(self, standby: Standby) -> None:
        """End a standby that will not become its attempt, and what was made for that attempt."""
        standby.drop()
        if standby.cgroup is not None:
            self.cgroups_to_remove.append(standby.cgroup)  # removed once its processes are gone
        if len(self.store.attempts(standby.job_id)) < standby.number:  # the attempt never started
            shutil.rmtree(standby.run_dir, ignore_errors=True)

    def remove_orphaned_standby_leftovers(self) -> None:
        """On start: what a standby made for a job's next attempt (its run dir and cgroup)
        when the daemon that started it died without dropping it. The standby itself exits
        when that daemon's pipe closes; the attempt never started, or the store would count it."""
        own = cgroup.cgroup_of(os.getpid())
        for job in self.store.jobs():
            number = len(self.store.attempts(job.id)) + 1
            run_dir = self.state.run_dir(job.id, number)
            if run_dir.is_dir():
                log.info("removing an unused standby's run dir", job=job.id, attempt=number)
                shutil.rmtree(run_dir, ignore_errors=True)
            leftover = own / attempt_cgroup_name(job.id, number) if own is not None else None
            if leftover is not None and leftover.is_dir():
                self.cgroups_to_remove.append(leftover)  # removed once its process is gone
        self._remove_empty_cgroups()

    def drop_standbys(self, wait_s: float = 0.0) -> None:
        """Drop every standby; wait up to `wait_s` for them to exit and remove their cgroups
        (the daemon is stopping: no later poll would)."""
        dropped = [standby for standby in self.standbys.values() if standby.process is not None]
        for job_id in list(self.standbys):
            self.drop_standby(job_id)
        deadline = self.clock.monotonic() + wait_s
        for standby in dropped:
            try:
                standby.process.wait(timeout=max(0.0, deadline - self.clock.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self._remove_empty_cgroups()

    def _sample_gpu_memory(self, live: LiveAttempt) -> None:
        pids = process_tree(live.job_pid)
        live.seen_pids |= pids
        used = self.gpus.memory_of(live.job_id, pids)
        if used > live.peak_gpu_memory * 1.05:  # record growth for `trainsup status`, not every wiggle
            self.store.update_attempt(live.job_id, live.number, peak_gpu_memory=used)
        live.peak_gpu_memory = max(live.peak_gpu_memory, used)

    # --- finish ------------------------------------------------------------------

    def finish(self, job_id: str, number: int, ended: EndedRecord | None, now: float,
               host_restart: bool = False) -> Decision:
        """Attempt `number` ended (`ended` is its monitor's record, if any): observe, decide, apply.

        The attempt stays watched until its end is committed: if the disk is full, the
        error propagates and the next poll settles it again.
        """
        live = self.live.get(job_id)
        job, attempt = self.store.job(job_id), self.store.attempts(job_id)[number - 1]
        seen = observe(job, attempt, ended, now, host_restart=host_restart)
        calibration = None
        if live is not None:
            tracker = live.hang_tracker
            calibration = HeartbeatCalibration(tracker.gaps, tracker.longest_gap, tracker.ever_beat)
        decision = self._settle(job, attempt, seen, now, live.peak_gpu_memory if live else None, calibration)
        if live is not None:
            del self.live[job_id]
            live.monitor.close()
            if not live.started_seen:  # it ended before a poll saw it run: still record what ran
                self.records_due.append(live.run_dir)
        pids = (live.seen_pids | {live.job_pid}) if live and live.job_pid else set()
        self.gpus.release_after(job_id, pids, self.clock.monotonic())
        return decision

    def _settle(self, job: Job, attempt: Attempt, seen: Observation, now: float,
                peak_gpu_memory: int | None = None, calibration: HeartbeatCalibration | None = None) -> Decision:
        reason = classify(seen)
        with self.store.transaction():
            if calibration is not None:
                self.store.save_heartbeat_calibration(job.id, calibration)
            self.store.update_attempt(
                job.id, attempt.number, ended_at=seen.ended_at, exit_code=seen.exit_code, signal=seen.signal,
                reason=reason, detail=seen.describe(), checkpoint_after=seen.checkpoint, job_pid=seen.job_pid,
                peak_gpu_memory=peak_gpu_memory or attempt.peak_gpu_memory, newest_write_after=seen.newest_write,
            )
            self.store.add_event(job.id, "attempt_ended",
                                 f"attempt {attempt.number} ended: {seen.describe()} → {reason}", now)
            decision = self._decide(job, seen)
            self._apply(job, decision, now)
        if seen.cgroup is not None:
            self.cgroups_to_remove.append(seen.cgroup)
        self.notifier.decided(job, attempt, str(decision.action), str(self.store.job(job.id).state), str(reason),
                              decision.message)
        log.info("attempt ended", job=job.id, attempt=attempt.number, reason=str(reason), detail=seen.describe(),
                 decision=str(decision.action), message=decision.message)
        return decision

    def _decide(self, job: Job, seen: Observation) -> Decision:
        attempts = self.store.attempts(job.id)
        since = job.budget_reset_at  # a manual `trainsup restart` gives the job a fresh budget
        return decide(
            records_of(attempts, since),
            job.spec.restart,
            cancel_requested=job.stop_requested == "cancel",
            job_checkpoints=any(a.checkpoint_after for a in attempts if a.started_at >= (since or 0.0)),
            jitter=self.rng.random(),
            hold_after_host_restart=job.spec.on_boot == "hold",
            batch=attempts[-1].batch,
            batch_size=job.spec.batch_size,
            checkpoints=seen.checkpoints,
        )

    def _apply(self, job: Job, decision: Decision, now: float) -> None:
        """Carry out a decision: a checkpoint set aside, the new batch, what worked, the job's next state."""
        if decision.quarantine is not None:
            self._quarantine(job, decision.quarantine, now)
        if decision.batch is not None:
            old = self.store.attempts(job.id)[-1].batch
            self.store.update_job(job.id, batch=decision.batch)
            self.store.remember_micro(job.name, decision.batch.global_batch, decision.batch.micro)
            self.store.add_event(job.id, "batch_backoff", _backoff_message(old, decision.batch), now)
        if decision.action is Action.SUCCEED and job.batch:
            self.store.remember_micro(job.name, job.batch.global_batch, job.batch.micro)
        current = self.store.job(job.id).state
        message = f"{decision.action}: {decision.message}"
        if decision.action is Action.RESTART:
            if decision.delay > 0:
                self.store.set_state(job.id, current, JobState.BACKOFF, now, "decision", message,
                                     next_start_at=now + decision.delay, stop_requested=None)
            else:
                self.store.set_state(job.id, current, JobState.QUEUED, now, "decision", message, stop_requested=None)
            return
        target = TARGET_STATE[decision.action]
        self.store.set_state(job.id, current, target, now, "decision", message, stop_requested=None,
                             result=decision.message if target.is_terminal else None)
        if target not in STANDBY_STATES:
            self.drop_standby(job.id)

    def _quarantine(self, job: Job, name: str, now: float) -> None:
        try:
            moved = quarantine(Path(job.checkpoint_dir), name)
        except OSError as exc:
            self.store.add_event(job.id, "quarantine_failed", f"could not move {name} into quarantine/: {exc}", now)
            return
        if moved is not None:
            self.store.add_event(job.id, "quarantined", f"{name} kills every attempt at load: moved to {moved}", now)

    def _remove_empty_cgroups(self) -> None:
        self.cgroups_to_remove = [path for path in self.cgroups_to_remove
                                  if path.exists() and not cgroup.remove(path)]

    # --- stop --------------------------------------------------------------------

    def request_stop(self, job_id: str) -> None:
        """Ask the attempt's monitor to stop the job (stop signal, SIGKILL after grace)."""
        live = self.live.get(job_id)
        if live is not None:
            self.launcher.stop(live.monitor)


def _resume_args(job: Job, found: FoundCheckpoint | None) -> list[str]:
    """The spec's `resume.args` with `{checkpoint}` filled in; none without a checkpoint."""
    if job.spec.resume is None or found is None:
        return []
    path = str(Path(job.checkpoint_dir) / found.name)
    return [arg.replace("{checkpoint}", path) for arg in job.spec.resume.args]


def _start_message(number: int, found: FoundCheckpoint | None, resume_args: list[str], batch: Batch | None,
                   gpu_uuids: list[str], now: float) -> str:
    parts = [f"will find {found.describe(now)}" if found else "no checkpoint yet: starting fresh"]
    if resume_args:
        parts.append(f"passing {' '.join(resume_args)}")
    if batch:
        parts.append(batch.describe())
    if gpu_uuids:
        parts.append(f"GPUs {','.join(gpu_uuids)}")
    return f"attempt {number} starting ({'; '.join(parts)})"


def _standby_note(standby: str | None) -> str:
    """What started.json says of the standby, for the `attempt_running` event."""
    if standby is None:
        return ""
    return " (its warm standby)" if standby == "used" else f" (standby {standby})"


def _backoff_message(old: Batch | None, new: Batch) -> str:
    was = f"micro-batch {old.micro} → {new.micro}, accumulation {old.grad_accum} → {new.grad_accum}" if old else \
        f"micro-batch {new.micro}, accumulation {new.grad_accum}"
    return f"{was} (global batch {new.global_batch} unchanged)"
