"""`trainsup cancel|restart|hold|release JOB`: a control request through the inbox.

The answer says what will happen, read from the job's state in the store before the
request is written: a request that the daemon would ignore is not written at all, and
the command exits 1 with the reason. A job already where the request would put it
(cancel of a cancelled job, hold of a held one) is told so, with exit 0. States that
can still change before the daemon reads the request (a queued job may start) take
the race-safe path: the request is written and the daemon decides again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainsup.commands.common import JobRef, open_store, resolve_job
from trainsup.errors import TrainsupError
from trainsup.jobs import inbox
from trainsup.jobs.states import JobState
from trainsup.jobs.store import Job
from trainsup.paths import StateDir
from trainsup.units import format_duration

_S = JobState
ACTIONS = ("cancel", "restart", "hold", "release")


@dataclass(frozen=True)
class Answer:
    job_id: str
    action: str
    state: str  # the state the job was in when asked
    requested: bool  # a request was written for the daemon
    message: str  # what will happen, one sentence

    def to_json(self) -> dict:
        return {"id": self.job_id, "action": self.action, "state": self.state,
                "requested": self.requested, "message": self.message}


def request(state: StateDir, key: str, action: str, force: bool = False) -> Answer:
    """Ask the daemon to `action` the job `key` names, if that can do anything.

    Raises:
        TrainsupError: nothing would happen (one sentence saying why); exit status 1.
        JobNotFoundError, AmbiguousJobError: `key` names no job, or several.
    """
    store = open_store(state)
    try:
        ref = resolve_job(state, store, key)
        job = None if ref.pending or store is None else store.job(ref.id)
        answer = _answer(ref, job, action, force, time.time())
    finally:
        if store is not None:
            store.close()
    if answer.requested:
        state.ensure()
        payload = {"kind": "control", "job_id": ref.id, "action": action, "requested_at": time.time()}
        if force:
            payload["force"] = True
        inbox.drop(state.inbox, payload)
    return answer


@dataclass(frozen=True)
class _Asked:
    """A request about to be answered: the job as the store has it (None: still in the inbox)."""

    ref: JobRef
    job: Job | None
    action: str
    now: float

    @property
    def current(self) -> JobState:
        return _S.QUEUED if self.job is None else self.job.state

    @property
    def name(self) -> str:
        return f"job {self.ref.id}"

    def will(self, message: str) -> Answer:
        return Answer(self.ref.id, self.action, str(self.current), True, message)

    def already(self, message: str) -> Answer:
        return Answer(self.ref.id, self.action, str(self.current), False, message)


def _answer(ref: JobRef, job: Job | None, action: str, force: bool, now: float) -> Answer:
    asked = _Asked(ref, job, action, now)
    if action == "cancel":
        return _cancel(asked, force)
    if action in _ANSWERS:
        return _ANSWERS[action](asked)
    raise TrainsupError(f"unknown control action {action!r}; use one of {', '.join(ACTIONS)}.")


def _cancel(asked: _Asked, force: bool) -> Answer:
    current, name, job = asked.current, asked.name, asked.job
    if current in (_S.SUCCEEDED, _S.FAILED):
        raise TrainsupError(f"{name} already {current}; there is nothing to cancel.")
    if current is _S.CANCELLED:
        return asked.already(f"{name} is already cancelled.")
    if current in (_S.STARTING, _S.RUNNING):
        if force:
            return asked.will(f"cancelling {name} ({current}): SIGKILL to its processes now.")
        return asked.will(f"cancelling {name} ({current}): {job.spec.stop_signal} now, SIGKILL after "
                          f"{format_duration(job.spec.grace_period)} if it has not exited "
                          f"(`trainsup cancel --force {asked.ref.id}` kills it now).")
    if current is _S.STOPPING:
        return _cancel_stopping(asked, force)
    return asked.will(f"cancelling {name} ({current}): it will not start again.")


def _cancel_stopping(asked: _Asked, force: bool) -> Answer:
    """A job already stopping: say how long until the SIGKILL, or ask for it now."""
    name, job = asked.name, asked.job
    since = max(0.0, asked.now - job.state_since)
    stopping = f"stopping for {format_duration(since)}"
    why = "it is being cancelled" if job.stop_requested == "cancel" else "the daemon is stopping it"
    if force:
        return asked.will(f"cancelling {name}: SIGKILL to its processes now ({why}, {stopping}).")
    left = job.spec.grace_period - since
    when = f"SIGKILL in {format_duration(left)}" if left > 0 else "SIGKILL is due now"
    hint = f"`trainsup cancel --force {asked.ref.id}` kills it now"
    if job.stop_requested == "cancel":
        return asked.already(f"{name} is already being cancelled ({stopping}): {when} unless it exits first; {hint}.")
    return asked.will(f"cancelling {name} ({why}, {stopping}): it ends as cancelled, "
                      f"{when} unless it exits first; {hint}.")


def _restart(asked: _Asked) -> Answer:
    current, name = asked.current, asked.name
    if current.is_terminal:
        return asked.will(f"restarting {name} ({current}): queued again with a fresh restart budget, "
                          "resuming from its newest checkpoint.")
    hint = {_S.HELD: "`trainsup release` lets it start",
            _S.QUEUED: "it starts by itself when its turn comes",
            _S.BACKOFF: "it starts again by itself after its backoff"}.get(current, "cancel it first")
    raise TrainsupError(f"{name} is {current}: restart only queues a succeeded, failed or cancelled job "
                        f"again; {hint}.")


def _hold(asked: _Asked) -> Answer:
    current, name = asked.current, asked.name
    if current is _S.HELD:
        return asked.already(f"{name} is already held.")
    if current in (_S.QUEUED, _S.BACKOFF):
        return asked.will(f"holding {name} ({current}): it will not start until `trainsup release {asked.ref.id}` "
                          "(unless it starts before the daemon reads this).")
    if current.is_terminal:
        raise TrainsupError(f"{name} already {current}; hold only keeps a waiting job from starting.")
    raise TrainsupError(f"{name} is {current}; hold only keeps a waiting job from starting "
                        "(`trainsup cancel` stops a running one).")


def _release(asked: _Asked) -> Answer:
    current, name = asked.current, asked.name
    if current is _S.HELD:
        return asked.will(f"releasing {name}: it is queued and starts when its turn comes.")
    if current in (_S.QUEUED, _S.BACKOFF):
        return asked.already(f"{name} is not held ({current}); it starts by itself.")
    raise TrainsupError(f"{name} is {current}, not held; there is nothing to release.")


_ANSWERS = {"restart": _restart, "hold": _hold, "release": _release}
