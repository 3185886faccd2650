"""Starting attempts, recording how they end, and acting on the decision."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from trainsup.durable import read_json
from trainsup.jobs.spec import RestartPolicy
from trainsup.jobs.states import EndReason, JobState
from trainsup.jobs.store import Attempt, Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor import host
from trainsup.supervisor.checkpoints import newest_checkpoint
from trainsup.supervisor.classify import AttemptFacts, classify, describe_exit
from trainsup.supervisor.launcher import LaunchPlan, start_monitor
from trainsup.supervisor.live import LiveAttempt
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

    def __init__(self, store: Store, state: StateDir, boot_id: str, rng: random.Random | None = None):
        self.store = store
        self.state = state
        self.boot_id = boot_id
        self.live: dict[str, LiveAttempt] = {}
        self.rng = rng or random.Random()

    # --- start -------------------------------------------------------------------

    def start(self, job: Job, batch_env: dict[str, str], gpu_env: dict[str, str], now: float) -> None:
        number = len(self.store.attempts(job.id)) + 1
        plan = LaunchPlan(
            job=job,
            number=number,
            run_dir=self.state.run_dir(job.id, number),
            log_path=self.state.attempt_log(job.id, number),
            batch_env=batch_env,
            gpu_env=gpu_env,
        )
        checkpoint = newest_checkpoint(job.checkpoint_dir)
        with self.store.transaction():
            self.store.insert_attempt(Attempt(
                job_id=job.id, number=number, run_dir=str(plan.run_dir), log_path=str(plan.log_path),
                boot_id=self.boot_id, started_at=now, monitor_pid=None, monitor_started=None,
                job_pid=None, ended_at=None, exit_code=None, signal=None, reason=None, detail=None,
                checkpoint_before=checkpoint, checkpoint_after=None,
                batch={k: int(v) for k, v in batch_env.items()} or None, peak_gpu_memory=None,
            ))
            self.store.set_state(job.id, JobState.QUEUED, JobState.STARTING, now)
            resume = f"resuming from {checkpoint}" if checkpoint else "no checkpoint yet: starting fresh"
            self.store.add_event(job.id, "attempt_started", f"attempt {number} starting ({resume})", now)
        try:
            process = start_monitor(plan)
        except OSError as exc:
            self._record_spawn_failure(job.id, number, plan.run_dir, str(exc), now)
            return
        started = host.create_time(process.pid)
        self.store.update_attempt(job.id, number, monitor_pid=process.pid, monitor_started=started)
        self.live[job.id] = LiveAttempt(
            job_id=job.id, number=number, run_dir=plan.run_dir, monitor_pid=process.pid,
            monitor_started=started, pidfd=host.open_pidfd(process.pid), process=process,
        )
        log.info("attempt started", job=job.id, name=job.name, attempt=number, monitor_pid=process.pid)

    def _record_spawn_failure(self, job_id: str, number: int, run_dir: Path, error: str, now: float) -> None:
        ended = {"exit_code": None, "signal": None, "ended_at": now, "spawn_error": error}
        self.finish(job_id, number, run_dir, ended, now)

    # --- observe -----------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Record every attempt that has started or ended since the last poll."""
        for live in list(self.live.values()):
            self._poll_one(live, now)

    def _poll_one(self, live: LiveAttempt, now: float) -> None:
        live.reap_if_child()
        ended = read_json(live.run_dir / "ended.json")
        if ended is None and not live.started_seen:
            self._note_started(live, now)
        if ended is None and not host.is_same_process(live.monitor_pid, live.monitor_started):
            ended = read_json(live.run_dir / "ended.json")  # it may have written it just before exiting
            if ended is None:
                ended = {"exit_code": None, "signal": None, "ended_at": now, "lost": True}
        if ended is not None:
            self.finish(live.job_id, live.number, live.run_dir, ended, now)

    def _note_started(self, live: LiveAttempt, now: float) -> None:
        started = read_json(live.run_dir / "started.json")
        if started is None:
            return
        live.started_seen = True
        job = self.store.job(live.job_id)
        with self.store.transaction():
            self.store.update_attempt(live.job_id, live.number, job_pid=started["job_pid"])
            if job.state is JobState.STARTING:
                self.store.set_state(job.id, JobState.STARTING, JobState.RUNNING, now)
            self.store.add_event(job.id, "attempt_running", f"attempt {live.number} running as pid {started['job_pid']}", now)

    # --- finish ------------------------------------------------------------------

    def finish(
        self, job_id: str, number: int, run_dir: Path, ended: dict[str, Any], now: float,
        reason: EndReason | None = None,
    ) -> Decision:
        """Record how attempt `number` ended, decide what comes next and do it."""
        job = self.store.job(job_id)
        attempt = self.store.attempts(job_id)[number - 1]
        if reason is None:
            reason = EndReason.LOST if ended.get("lost") else classify(self._facts(job, attempt, ended))
        detail = ended.get("spawn_error") or describe_exit(ended.get("exit_code"), ended.get("signal"))
        checkpoint_after = newest_checkpoint(job.checkpoint_dir)
        started = read_json(run_dir / "started.json") or {}
        with self.store.transaction():
            if attempt.job_pid is None and started.get("job_pid"):
                self.store.update_attempt(job_id, number, job_pid=started["job_pid"])
            self.store.update_attempt(
                job_id, number, ended_at=ended.get("ended_at") or now, exit_code=ended.get("exit_code"),
                signal=ended.get("signal"), reason=reason, detail=detail, checkpoint_after=checkpoint_after,
            )
            self.store.add_event(job_id, "attempt_ended", f"attempt {number} ended: {detail} → {reason}", now)
            decision = self._decide(job)
            self._apply(job, decision, now)
        live = self.live.pop(job_id, None)
        if live is not None:
            live.close()
        log.info("attempt ended", job=job_id, attempt=number, reason=str(reason), detail=detail,
                 decision=str(decision.action), message=decision.message)
        return decision

    def _facts(self, job: Job, attempt: Attempt, ended: dict[str, Any]) -> AttemptFacts:
        return AttemptFacts(
            exit_code=ended.get("exit_code"),
            signal=ended.get("signal"),
            spawn_error=ended.get("spawn_error"),
            trainer_exit=read_json(Path(attempt.run_dir) / "exit.json"),
            log_tail=_tail(Path(attempt.log_path), LOG_TAIL_BYTES),
            stop_requested=job.stop_requested,
            hang_detected=bool(ended.get("hang")),
        )

    def _decide(self, job: Job) -> Decision:
        attempts = self.store.attempts(job.id)
        history = [
            AttemptRecord(
                reason=a.reason,
                uptime=(a.ended_at or a.started_at) - a.started_at,
                new_checkpoint=a.checkpoint_after is not None and a.checkpoint_after != a.checkpoint_before,
            )
            for a in attempts
            if a.reason is not None
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

    # --- stop --------------------------------------------------------------------

    def request_stop(self, job_id: str) -> None:
        """Ask the attempt's monitor to stop the job (SIGTERM, SIGKILL after grace)."""
        live = self.live.get(job_id)
        if live is None:
            return
        try:
            os.kill(live.monitor_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _tail(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
