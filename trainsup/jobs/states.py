"""The job state machine and the reasons an attempt ends. Stdlib only.

    queued ──► starting ──► running ──► succeeded
      ▲  │        │            │
      │  ▼        ▼            ▼
      │ held    backoff ◄── (crash) ──► failed
      │           │
      └───────────┘   any live state ──► stopping ──► cancelled
"""

from __future__ import annotations

from enum import StrEnum

from trainsup.errors import IllegalTransitionError


class JobState(StrEnum):
    QUEUED = "queued"
    HELD = "held"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def has_live_attempt(self) -> bool:
        return self in (JobState.STARTING, JobState.RUNNING, JobState.STOPPING)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_S = JobState
# After an attempt ends, a job may go anywhere the decision sends it.
_AFTER_ATTEMPT = {_S.SUCCEEDED, _S.FAILED, _S.BACKOFF, _S.QUEUED, _S.HELD}

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.STARTING, _S.HELD, _S.CANCELLED, _S.FAILED}),  # failed: can never be placed
    _S.HELD: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.STARTING: frozenset({_S.RUNNING, _S.STOPPING} | _AFTER_ATTEMPT),
    _S.RUNNING: frozenset({_S.STOPPING} | _AFTER_ATTEMPT),
    _S.BACKOFF: frozenset({_S.QUEUED, _S.HELD, _S.CANCELLED}),
    _S.STOPPING: frozenset({_S.CANCELLED} | _AFTER_ATTEMPT),
    _S.SUCCEEDED: frozenset({_S.QUEUED}),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.CANCELLED: frozenset({_S.QUEUED}),
}


def check_transition(current: JobState, target: JobState) -> None:
    """Raise IllegalTransitionError unless the state machine allows current → target."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransitionError(f"a job cannot go from {current} to {target}")


class EndReason(StrEnum):
    """Why an attempt ended: exactly one per ended attempt."""

    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"  # exit 75 after a checkpoint: resume at once
    CRASH = "crash"
    CUDA_OOM = "cuda_oom"
    HOST_OOM = "host_oom"
    HANG = "hang"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the daemon stopped it on shutdown
    HOST_RESTART = "host_restart"  # it was running when the machine went down
    LOST = "lost"  # the monitor vanished without recording an exit
    SPAWN_FAILED = "spawn_failed"
    CONFIG_ERROR = "config_error"  # the job said no restart can fix it (exit.json)
