"""Starting attempts, watching them, recording how they end, acting on the decision."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from trainsup.contracts import read_json
from trainsup.jobs.spec import RestartPolicy
from trainsup.jobs.states import EndReason, JobState
from trainsup.jobs.store import Attempt, Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor import cgroup, hangs, host
from trainsup.supervisor.batching import BatchConfig, after_oom, initial, to_env
from trainsup.supervisor.checkpoints import newest_checkpoint
from trainsup.supervisor.classify import AttemptFacts, classify, describe_exit
from trainsup.supervisor.gpus import GpuBook, process_tree
from trainsup.supervisor.heartbeat import HangTracker
from trainsup.supervisor.launcher import LaunchPlan, start_monitor
from trainsup.supervisor.live import LiveAttempt
from trainsup.supervisor.placement import gpu_env
from trainsup.supervisor.policy import Action, AttemptRecord, Decision, decide

log = structlog.get_logger("trainsup.attempts")

LOG_TAIL_BYTES = 16384

TARGET_STATE = {
    Action.SUCCEED: JobState.SUCCEEDED,
    Action.FAIL: JobState.FAILED,
    Action.CANCEL: JobState.CANCELLED,
    Action.REQUEUE: JobState.QUEUED,
    Action.HOLD: JobState.HELD,
}


class Attempts:
    """Owns the live attempts of every job."""

    def __init__(self, store: Store, state: StateDir, boot_id: str, gpus: GpuBook, rng: random.Random | None = None):
        self.store = store
        self.state = state
        self.boot_id = boot_id
        self.gpus = gpus
        self.live: dict[str, LiveAttempt] = {}
        self.rng = rng or random.Random()
        self.cgroups_to_remove: list[Path] = []

    # --- start -------------------------------------------------------------------

    def start(self, job: Job, gpu_uuids: list[str], now: float) -> None:
        number = len(self.store.attempts(job.id)) + 1
        batch = self._batch_for(job)
        plan = LaunchPlan(
            job=job, number=number,
            run_dir=self.state.run_dir(job.id, number),
            log_path=self.state.attempt_log(job.id, number),
            batch_env=to_env(batch) if batch else {},
            gpu_env=gpu_env(gpu_uuids) if gpu_uuids else {},
            cgroup=self._make_cgroup(job, number),
        )
        attempt = Attempt(
            job_id=job.id, number=number, run_dir=str(plan.run_dir), log_path=str(plan.log_path),
            boot_id=self.boot_id, started_at=now, monitor_pid=None, monitor_started=None,
            job_pid=None, ended_at=None, exit_code=None, signal=None, reason=None, detail=None,
            checkpoint_before=newest_checkpoint(job.checkpoint_dir), checkpoint_after=None,
            batch=_batch_dict(batch), peak_gpu_memory=None, gpu_uuids=gpu_uuids or None,
        )
        with self.store.transaction():
            self.store.insert_attempt(attempt)
            self.store.set_state(job.id, JobState.QUEUED, JobState.STARTING, now)
            self.store.add_event(job.id, "attempt_started", _start_message(attempt, batch, gpu_uuids), now)
        try:
            process = start_monitor(plan)
        except OSError as exc:
            self.gpus.release_after(job.id, set(), time.monotonic())
            self._settle(job.id, number, plan.run_dir, {"ended_at": now, "spawn_error": str(exc)}, now)
            return
        started = host.create_time(process.pid)
        self.store.update_attempt(job.id, number, monitor_pid=process.pid, monitor_started=started)
        self.adopt(attempt, process.pid, started, process)
        log.info("attempt started", job=job.id, name=job.name, attempt=number, monitor_pid=process.pid)

    def adopt(self, attempt: Attempt, monitor_pid: int, monitor_started: float | None, process=None) -> LiveAttempt:
        """Watch an attempt: one this daemon just started, or one it re-adopts."""
        job = self.store.job(attempt.job_id)
        saved = self.store.recall(f"hang:{job.id}")
        tracker = hangs.start_tracking(HangTracker.from_dict(saved) if saved else None, attempt.started_at)
        live = LiveAttempt(
            job_id=job.id, number=attempt.number, run_dir=Path(attempt.run_dir), monitor_pid=monitor_pid,
            monitor_started=monitor_started, pidfd=host.open_pidfd(monitor_pid), log_path=Path(attempt.log_path),
            started_at=attempt.started_at, spec=job.spec, gpu_uuids=attempt.gpu_uuids or [],
            process=process, job_pid=attempt.job_pid, hang_tracker=tracker,
        )
        self.live[job.id] = live
        self.gpus.adopt(job.id, live.gpu_uuids)
        return live

    def _batch_for(self, job: Job) -> BatchConfig | None:
        """The micro-batch in force: the job's current one, else what worked before, else the spec's."""
        spec_batch = job.spec.get("batch_size")
        if not spec_batch:
            return None
        if job.batch:
            return BatchConfig(job.batch["global"], job.batch["micro"], job.batch["accum"])
        remembered = self.store.recall(_batch_memory(job.name, spec_batch["global"]))
        micro = min(spec_batch["micro"], remembered or spec_batch["micro"])
        batch = initial(spec_batch["global"], micro)
        self.store.update_job(job.id, batch_json=_batch_dict(batch))
        return batch

    def _make_cgroup(self, job: Job, number: int) -> str | None:
        try:
            path = cgroup.create_job_cgroup(f"trainsup-{job.id}-{number}", job.spec.get("memory_limit"))
        except cgroup.CgroupError as exc:
            log.warning("no cgroup for the attempt", job=job.id, error=str(exc))
            return None
        return str(path) if path else None

    # --- observe -----------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Record every attempt that has started or ended since the last poll."""
        for live in list(self.live.values()):
            self._poll_one(live, now)
        self._remove_empty_cgroups()

    def _poll_one(self, live: LiveAttempt, now: float) -> None:
        live.reap_if_child()
        ended = read_json(live.run_dir / "ended.json")
        if ended is None and not live.started_seen:
            self._note_started(live, now)
        if ended is None and not host.is_same_process(live.monitor_pid, live.monitor_started):
            ended = read_json(live.run_dir / "ended.json")  # it may have written it just before exiting
            if ended is None:
                never_started = not (live.run_dir / "started.json").exists()
                stopped = self.store.job(live.job_id).stop_requested is not None
                # A monitor we stopped before it started the job did not lose anything.
                ended = {"exit_code": None, "signal": None, "ended_at": now,
                         "never_started": never_started and stopped, "lost": not (never_started and stopped)}
        if ended is not None:
            self.finish(live.job_id, live.number, live.run_dir, ended, now)

    def _note_started(self, live: LiveAttempt, now: float) -> None:
        started = read_json(live.run_dir / "started.json")
        if started is None:
            return
        live.started_seen = True
        live.job_pid = started["job_pid"]
        job = self.store.job(live.job_id)
        with self.store.transaction():
            self.store.update_attempt(live.job_id, live.number, job_pid=live.job_pid)
            if job.state is JobState.STARTING:
                self.store.set_state(job.id, JobState.STARTING, JobState.RUNNING, now)
            self.store.add_event(job.id, "attempt_running", f"attempt {live.number} running as pid {live.job_pid}", now)

    def watch(self, now: float) -> None:
        """Hang detection and GPU memory sampling for every running attempt."""
        for live in list(self.live.values()):
            if live.job_pid is None or live.hung:
                continue
            live.hang_tracker, verdict = hangs.check(
                live.hang_tracker, live.spec, live.run_dir, live.log_path, live.started_at, now)
            if verdict is not None:
                live.hung = True
                self.store.add_event(live.job_id, "hang", f"attempt {live.number} hung: {verdict.describe()}", now)
                hangs.kill_hung(live.run_dir, live.job_pid, verdict)
            if live.gpu_uuids:
                self._sample_gpu_memory(live)

    def _sample_gpu_memory(self, live: LiveAttempt) -> None:
        pids = process_tree(live.job_pid)
        live.seen_pids |= pids
        used = self.gpus.memory_of(pids)
        if used > live.peak_gpu_memory * 1.05:  # record growth for `trainsup status`, not every wiggle
            self.store.update_attempt(live.job_id, live.number, peak_gpu_memory=used)
        live.peak_gpu_memory = max(live.peak_gpu_memory, used)

    # --- finish ------------------------------------------------------------------

    def finish(
        self, job_id: str, number: int, run_dir: Path, ended: dict[str, Any], now: float,
        reason: EndReason | None = None,
    ) -> Decision:
        """Record how attempt `number` ended, decide what comes next and do it."""
        live = self.live.pop(job_id, None)
        if live is not None:
            live.close()
            if live.hang_tracker is not None:
                self.store.remember(f"hang:{job_id}", live.hang_tracker.to_dict())
        pids = (live.seen_pids | {live.job_pid}) if live and live.job_pid else set()
        self.gpus.release_after(job_id, pids, time.monotonic())
        return self._settle(job_id, number, run_dir, ended, now, reason, live.peak_gpu_memory if live else None)

    def _settle(
        self, job_id: str, number: int, run_dir: Path, ended: dict[str, Any], now: float,
        reason: EndReason | None = None, peak_gpu_memory: int | None = None,
    ) -> Decision:
        job = self.store.job(job_id)
        attempt = self.store.attempts(job_id)[number - 1]
        if reason is None:
            reason = EndReason.LOST if ended.get("lost") else classify(self._facts(job, attempt, ended))
        detail = ended.get("spawn_error") or describe_exit(ended.get("exit_code"), ended.get("signal"))
        started = read_json(run_dir / "started.json") or {}
        with self.store.transaction():
            self.store.update_attempt(
                job_id, number, ended_at=ended.get("ended_at") or now, exit_code=ended.get("exit_code"),
                signal=ended.get("signal"), reason=reason, detail=detail,
                checkpoint_after=newest_checkpoint(job.checkpoint_dir),
                job_pid=attempt.job_pid or started.get("job_pid"),
                peak_gpu_memory=peak_gpu_memory or attempt.peak_gpu_memory,
            )
            self.store.add_event(job_id, "attempt_ended", f"attempt {number} ended: {detail} → {reason}", now)
            decision = self._next_step(job, reason, now)
            self._apply(job, decision, now)
        log.info("attempt ended", job=job_id, attempt=number, reason=str(reason), detail=detail,
                 decision=str(decision.action), message=decision.message)
        return decision

    def _facts(self, job: Job, attempt: Attempt, ended: dict[str, Any]) -> AttemptFacts:
        launch = read_json(Path(attempt.run_dir) / "launch.json") or {}
        oom_kills = cgroup.oom_kill_count(Path(launch["cgroup"])) if launch.get("cgroup") else None
        if launch.get("cgroup"):
            self.cgroups_to_remove.append(Path(launch["cgroup"]))
        return AttemptFacts(
            exit_code=ended.get("exit_code"),
            signal=ended.get("signal"),
            spawn_error=ended.get("spawn_error"),
            never_started=bool(ended.get("never_started")),
            trainer_exit=read_json(Path(attempt.run_dir) / "exit.json"),
            log_tail=_tail(Path(attempt.log_path), LOG_TAIL_BYTES),
            stop_requested=job.stop_requested,
            hang_detected=(Path(attempt.run_dir) / "hang.json").exists(),
            oom_kills_delta=oom_kills,
        )

    def _next_step(self, job: Job, reason: EndReason, now: float) -> Decision:
        changed_config = False
        if reason is EndReason.CUDA_OOM and job.spec.get("batch_size") and job.stop_requested is None:
            smaller = self._smaller_batch(job)
            if smaller is None:
                return Decision(Action.FAIL, f"cuda_oom at micro-batch {job.batch['micro']}, and no smaller "
                                             f"micro-batch ≥ min_micro {job.spec['batch_size']['min_micro']} divides the global batch")
            self._use_batch(job, smaller, now)
            changed_config = True
        if reason is EndReason.SUCCEEDED and job.batch:
            self.store.remember(_batch_memory(job.name, job.batch["global"]), job.batch["micro"])
        return self._decide(job, changed_config)

    def _smaller_batch(self, job: Job) -> BatchConfig | None:
        spec_batch = job.spec["batch_size"]
        current = BatchConfig(job.batch["global"], job.batch["micro"], job.batch["accum"])
        return after_oom(current, spec_batch["factor"], min_micro=spec_batch["min_micro"])

    def _use_batch(self, job: Job, batch: BatchConfig, now: float) -> None:
        self.store.update_job(job.id, batch_json=_batch_dict(batch))
        self.store.remember(_batch_memory(job.name, batch.global_batch), batch.micro)
        self.store.add_event(
            job.id, "batch_backoff",
            f"micro-batch {job.batch['micro']} → {batch.micro}, accumulation {job.batch['accum']} → {batch.accum} "
            f"(global batch {batch.global_batch} unchanged)", now)

    def _decide(self, job: Job, changed_config: bool) -> Decision:
        # A manual `trainsup restart` gives the job a fresh budget.
        reset_at = self.store.recall(f"budget_reset:{job.id}") or 0.0
        attempts = [a for a in self.store.attempts(job.id) if a.reason is not None and a.started_at >= reset_at]
        history = [
            AttemptRecord(
                reason=a.reason,
                uptime=(a.ended_at or a.started_at) - a.started_at,
                new_checkpoint=a.checkpoint_after is not None and a.checkpoint_after != a.checkpoint_before,
                changed_config=changed_config if a is attempts[-1] else attempts[i + 1].batch != a.batch,
            )
            for i, a in enumerate(attempts)
        ]
        return decide(
            history,
            RestartPolicy.model_validate(job.spec["restart"]),
            cancel_requested=job.stop_requested == "cancel",
            job_checkpoints=any(a.checkpoint_after for a in attempts),
            jitter=self.rng.random(),
            hold_after_host_restart=job.spec.get("on_boot") == "hold",
        )

    def _apply(self, job: Job, decision: Decision, now: float) -> None:
        current = self.store.job(job.id).state
        if decision.action is Action.RESTART:
            if decision.delay > 0:
                self.store.set_state(job.id, current, JobState.BACKOFF, now,
                                     next_start_at=now + decision.delay, stop_requested=None)
            else:
                self.store.set_state(job.id, current, JobState.QUEUED, now, stop_requested=None)
        else:
            target = TARGET_STATE[decision.action]
            result = decision.message if target.is_terminal else None
            self.store.set_state(job.id, current, target, now, stop_requested=None, result=result)
        self.store.add_event(job.id, "decision", f"{decision.action}: {decision.message}", now)

    def _remove_empty_cgroups(self) -> None:
        self.cgroups_to_remove = [path for path in self.cgroups_to_remove
                                  if path.exists() and not cgroup.remove(path)]

    # --- stop --------------------------------------------------------------------

    def request_stop(self, job_id: str) -> None:
        """Ask the attempt's monitor to stop the job (SIGTERM, SIGKILL after grace)."""
        live = self.live.get(job_id)
        if live is None or not host.is_same_process(live.monitor_pid, live.monitor_started):
            return
        try:
            os.kill(live.monitor_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _start_message(attempt: Attempt, batch: BatchConfig | None, gpu_uuids: list[str]) -> str:
    parts = [f"resuming from {attempt.checkpoint_before}" if attempt.checkpoint_before
             else "no checkpoint yet: starting fresh"]
    if batch:
        parts.append(f"micro-batch {batch.micro} × accumulation {batch.accum} = {batch.global_batch}")
    if gpu_uuids:
        parts.append(f"GPUs {','.join(gpu_uuids)}")
    return f"attempt {attempt.number} starting ({'; '.join(parts)})"


def _batch_dict(batch: BatchConfig | None) -> dict[str, int] | None:
    if batch is None:
        return None
    return {"global": batch.global_batch, "micro": batch.micro, "accum": batch.accum}


def _batch_memory(name: str, global_batch: int) -> str:
    return f"batch:{name}:{global_batch}"


def _tail(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
