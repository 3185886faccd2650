"""Ingesting the inbox: each request applied in one transaction, then removed.

A file that is no valid request (hand-written, damaged, hostile) is set aside in the
state dir's rejected folder with one log line naming the reason; nothing of it is
applied, and nothing is written outside the state dir because of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import ValidationError

from trainsup import cleanup
from trainsup.durable import fsync_dir
from trainsup.jobs import inbox
from trainsup.jobs.requests import REQUEST_ADAPTER, Control, ControlRequest, Submission
from trainsup.jobs.spec import describe_validation_error
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Job, Store
from trainsup.paths import StateDir
from trainsup.supervisor.attempts import Attempts

log = structlog.get_logger("trainsup.intake")


class Intake:
    def __init__(self, store: Store, state: StateDir, attempts: Attempts):
        self.store = store
        self.state = state
        self.attempts = attempts
        self.stuck: set[str] = set()  # bad requests that could be neither moved nor removed

    def ingest_all(self, now: float) -> int:
        """Apply every pending request; return how many were taken."""
        paths = [path for path in inbox.pending(self.state.inbox) if path.name not in self.stuck]
        for path in paths:
            self._ingest(path, now)
        return len(paths)

    def _ingest(self, path: Path, now: float) -> None:
        try:
            data = inbox.read(path)
            if data is None:
                return
            request = REQUEST_ADAPTER.validate_json(data)
        except ValidationError as exc:
            self._set_aside(path, describe_validation_error(exc, tagged=True))
            return
        except (ValueError, OSError) as exc:
            self._set_aside(path, str(exc))
            return
        stop_after_commit: list[str] = []
        with self.store.transaction():
            if self.store.mark_ingested(path.name, now):
                if isinstance(request, Submission):
                    self._submit(request, now)
                else:
                    stop_after_commit += self._control(request, now)
        path.unlink(missing_ok=True)
        for job_id in stop_after_commit:
            self.attempts.request_stop(job_id)
            if isinstance(request, ControlRequest) and request.force:
                self._kill_now(job_id)

    def _kill_now(self, job_id: str) -> None:
        """`cancel --force`: SIGKILL the attempt's process group now, without waiting out its
        grace period. Its monitor, already asked to stop, records the end as usual."""
        live = self.attempts.live.get(job_id)
        if live is not None:
            self.attempts.launcher.kill_orphaned_job(live.run_dir)

    def _set_aside(self, path: Path, reason: str) -> None:
        log.error("set aside a bad inbox request", file=path.name, reason=reason[:300],
                  moved_to=str(self.state.rejected))
        if not inbox.set_aside(path, self.state.rejected):
            log.error("cannot move or remove a bad inbox request; ignoring it", file=path.name)
            self.stuck.add(path.name)

    def _submit(self, submission: Submission, now: float) -> None:
        spec = submission.spec
        job = Job(
            id=submission.job_id, name=spec.name, state=JobState.QUEUED,
            state_since=now, submitted_at=submission.submitted_at,
            spec_json=spec.model_dump_json(by_alias=True),
            spec_text=submission.spec_text, spec_path=submission.spec_path,
            environment=submission.environment, checkpoint_dir=str(spec.checkpoint_dir),
            next_start_at=None, stop_requested=None, batch=None, result=None, budget_reset_at=None,
        )
        if not self.store.insert_job(job):
            return
        self.store.add_event(job.id, "submitted", f"submitted from {submission.spec_path}", submission.submitted_at)
        if submission.fresh:
            self._set_aside_old_checkpoints(job, now)
        log.info("job queued", job=job.id, name=job.name)

    def _set_aside_old_checkpoints(self, job: Job, now: float) -> None:
        checkpoint_dir = Path(job.checkpoint_dir)
        aside = checkpoint_dir.with_name(f"{checkpoint_dir.name}.before-{job.id}")
        try:
            if not checkpoint_dir.is_dir() or not any(checkpoint_dir.iterdir()):
                return
            os.rename(checkpoint_dir, aside)
            fsync_dir(checkpoint_dir.parent)
        except OSError as exc:  # resuming instead of the fresh start asked for would be wrong
            self.store.set_state(job.id, JobState.QUEUED, JobState.FAILED, now, "fresh_failed",
                                 f"--fresh: cannot move the old checkpoints aside ({exc.strerror or exc})",
                                 result=f"--fresh: cannot move {checkpoint_dir} aside ({exc.strerror or exc})")
            return
        self.store.add_event(job.id, "fresh_start", f"--fresh: moved old checkpoints to {aside}", now)

    def _control(self, request: ControlRequest, now: float) -> list[str]:
        """Apply a control request; return the jobs whose running attempt must be stopped."""
        job = self.store.job(request.job_id)
        if job is None:
            log.warning("control request for an unknown job", job=request.job_id)
            return []
        handler = {
            Control.CANCEL: self._cancel,
            Control.RESTART: self._restart,
            Control.HOLD: self._hold,
            Control.RELEASE: self._release,
            Control.REMOVE: lambda job, now: self._remove(job, request.checkpoints, now),
        }[request.action]
        stop = handler(job, now)
        if request.force and stop:
            self.store.add_event(job.id, "cancel_forced", "cancel --force: SIGKILL to the job's processes now", now)
        return stop

    def _cancel(self, job: Job, now: float) -> list[str]:
        if job.state.is_terminal:
            self.store.add_event(job.id, "cancel_ignored", f"cancel ignored: the job already {job.state}", now)
            return []
        if job.state.has_live_attempt:
            message = "cancel requested: stopping the running attempt"
            if job.state is JobState.STOPPING:
                self.store.update_job(job.id, stop_requested="cancel")
                self.store.add_event(job.id, "cancel_requested", message, now)
            else:
                self.store.set_state(job.id, job.state, JobState.STOPPING, now, "cancel_requested", message,
                                     stop_requested="cancel")
            return [job.id]
        self.store.set_state(job.id, job.state, JobState.CANCELLED, now, "cancelled",
                             "cancelled before it started again", result="cancelled on request")
        return []

    def _restart(self, job: Job, now: float) -> list[str]:
        if not job.state.is_terminal:
            self.store.add_event(job.id, "restart_ignored", f"restart ignored: the job is {job.state}", now)
            return []
        self.store.set_state(job.id, job.state, JobState.QUEUED, now, "restarted",
                             "queued again on request, with a fresh restart budget", result=None, budget_reset_at=now)
        return []

    def _hold(self, job: Job, now: float) -> list[str]:
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            self.store.set_state(job.id, job.state, JobState.HELD, now, "held", "held on request")
        else:
            self.store.add_event(job.id, "hold_ignored", f"hold ignored: the job is {job.state}", now)
        return []

    def _release(self, job: Job, now: float) -> list[str]:
        if job.state is JobState.HELD:
            self.store.set_state(job.id, JobState.HELD, JobState.QUEUED, now, "released", "released on request")
        return []

    def _remove(self, job: Job, checkpoints: bool, now: float) -> list[str]:
        """Delete a finished job: files first, then its rows, in the request's transaction.

        Redone in full if the daemon dies between the two (the request stays in the inbox
        until the rows are gone), so a crash leaves no row without files that matter, nor
        files without a row.
        """
        if not job.state.is_terminal:
            self.store.add_event(job.id, "remove_ignored", f"remove ignored: the job is {job.state}", now)
            return []
        if waiting := self.store.waiting_on(job.id):
            self.store.add_event(job.id, "remove_ignored", f"remove ignored: job {waiting[0]} waits for it", now)
            return []
        job_dir = self.state.job_dir(job.id)
        named, kept = None, None
        if checkpoints:
            named, kept = cleanup.named_checkpoint_dir(job_dir, job.checkpoint_dir, cleanup.workdir_of(job.spec_json))
            if named is not None and (others := set(self.store.jobs_using_checkpoint_dir(str(named))) - {job.id}):
                named, kept = None, f"kept {named}: job {sorted(others)[0]} uses it too"
        try:
            cleanup.delete(cleanup.removal_paths(job_dir, named, job.id))
        except OSError as exc:  # the job stays, with what could not be deleted said in its timeline
            self.store.add_event(job.id, "remove_failed",
                                 f"remove failed: {exc.filename or job_dir}: {exc.strerror or exc}", now)
            log.error("cannot remove a job's files", job=job.id, error=str(exc))
            return []
        self.store.delete_job(job.id)
        log.info("job removed", job=job.id, name=job.name, checkpoint_dir=str(named) if named else None, note=kept)
        return []
