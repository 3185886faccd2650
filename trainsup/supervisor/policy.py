"""What to do after an attempt ends: a pure function of the job's attempt history.

`decide()` is the only producer of what comes next, including the smaller
micro-batch after a CUDA OOM (the decision carries it). `records_of()` turns stored
attempts into the records it reads. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from trainsup.batch import Batch
from trainsup.jobs.spec import BatchSize, RestartPolicy
from trainsup.jobs.states import EndReason
from trainsup.jobs.store import Attempt

FAILURES = frozenset({EndReason.CRASH, EndReason.CUDA_OOM, EndReason.HOST_OOM, EndReason.HANG, EndReason.LOST})
# Failures that can be a checkpoint killing the job as it loads (an OOM or a hang is not).
LOAD_FAILURES = frozenset({EndReason.CRASH, EndReason.LOST})
# What a Python error says when the file it loads is cut short or garbled.
UNLOADABLE_SIGNS = (
    "PytorchStreamReader", "central directory", "zip archive", "Ran out of input", "EOFError",
    "UnpicklingError", "invalid load key", "unexpected EOF", "SafetensorError", "deserializ",
    "HeaderTooLarge", "MetadataIncompleteBuffer", "JSONDecodeError", "truncated", "corrupt",
)
UNLOADABLE_STREAK = 2
RESUME_LATER = frozenset({EndReason.INTERRUPTED, EndReason.HOST_RESTART})


class Action(StrEnum):
    SUCCEED = "succeed"
    RESTART = "restart"  # after `delay` seconds
    REQUEUE = "requeue"  # start again when the daemon can, not a failure
    HOLD = "hold"
    FAIL = "fail"
    CANCEL = "cancel"


@dataclass(frozen=True)
class AttemptRecord:
    """The facts about one ended attempt that the policy needs."""

    reason: EndReason
    uptime: float
    new_checkpoint: bool  # it wrote to the checkpoint dir: progress
    changed_config: bool = False  # e.g. a smaller micro-batch after an OOM
    checkpoint_before: str | None = None  # the newest checkpoint when it started: what it loaded
    detail: str = ""  # how it ended: `exit 1: RuntimeError: ...`

    def progressed(self, job_checkpoints: bool, min_uptime: float) -> bool:
        if self.new_checkpoint or self.changed_config:
            return True
        return not job_checkpoints and self.uptime >= min_uptime


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str
    delay: float = 0.0
    batch: Batch | None = None  # the batch for the next attempt, when it changes
    quarantine: str | None = None  # the checkpoint to set aside before the next attempt


def records_of(attempts: Sequence[Attempt], since: float | None = None) -> list[AttemptRecord]:
    """The records `decide` reads: ended attempts started at or after `since`, oldest first.

    An attempt "changed config" when the next one ran with another batch.
    """
    ended = [a for a in attempts if a.reason is not None and a.started_at >= (since or 0.0)]
    return [
        AttemptRecord(
            reason=a.reason,
            uptime=(a.ended_at or a.started_at) - a.started_at,
            new_checkpoint=_wrote(a),
            changed_config=i + 1 < len(ended) and ended[i + 1].batch != a.batch,
            checkpoint_before=a.checkpoint_before,
            detail=a.detail or "",
        )
        for i, a in enumerate(ended)
    ]


def _wrote(attempt: Attempt) -> bool:
    """A new or changed file in the checkpoint dir (attempts from before schema 3: a new name)."""
    if attempt.newest_write_after is not None:
        return attempt.newest_write_after > (attempt.newest_write_before or 0.0)
    return attempt.checkpoint_after is not None and attempt.checkpoint_after != attempt.checkpoint_before


def decide(
    history: Sequence[AttemptRecord],
    policy: RestartPolicy,
    *,
    cancel_requested: bool = False,
    job_checkpoints: bool = False,
    jitter: float = 0.5,
    hold_after_host_restart: bool = False,
    batch: Batch | None = None,
    batch_size: BatchSize | None = None,
    checkpoints: Sequence[str] = (),
) -> Decision:
    """Decide after the last attempt in `history` ended.

    Args:
        history: every ended attempt of the job (since its budget was last reset), oldest first.
        policy: the job's restart policy.
        cancel_requested: the user asked to cancel the job.
        job_checkpoints: the job has ever written a checkpoint (so progress is
            measured by checkpoints, not uptime).
        jitter: a number in [0, 1) the caller draws; 0.5 means no jitter.
        hold_after_host_restart: the job's `on_boot` policy is `hold`.
        batch: the batch the last attempt ran with.
        batch_size: the spec's batch section: after a CUDA OOM a smaller micro-batch
            is tried, the global batch unchanged.
        checkpoints: the checkpoints in the job's checkpoint dir now, newest first.
    """
    last = history[-1]
    if cancel_requested or last.reason is EndReason.CANCELLED:
        return Decision(Action.CANCEL, "cancelled on request")
    if last.reason is EndReason.SUCCEEDED:
        return Decision(Action.SUCCEED, "the job exited 0")
    if last.reason is EndReason.CONFIG_ERROR:
        return Decision(Action.FAIL, _sentence(last.detail) or "the job reported an error no restart can fix")
    if last.reason is EndReason.CUDA_OOM and batch is not None and batch_size is not None:
        return _after_cuda_oom(history, policy, job_checkpoints, jitter, batch, batch_size)
    if last.reason is EndReason.SPAWN_FAILED:
        return Decision(Action.FAIL, _sentence(last.detail) or "the command could not be started")
    if last.reason is EndReason.PREEMPTED:
        return Decision(Action.RESTART, "preempted after a checkpoint: resuming at once")
    if last.reason in RESUME_LATER:
        if last.reason is EndReason.HOST_RESTART and hold_after_host_restart:
            return Decision(Action.HOLD, "the machine restarted; held as on_boot says")
        return Decision(Action.REQUEUE, f"{last.reason}: resuming from the last checkpoint")
    if (unloadable := _unloadable_checkpoint(history)) is not None:
        return _set_aside(unloadable, checkpoints, history)
    return _after_failure(history, policy, job_checkpoints, jitter)


def _unloadable_checkpoint(history: Sequence[AttemptRecord]) -> str | None:
    """The checkpoint that killed the last attempts as they loaded it, if that is what happened.

    The last `UNLOADABLE_STREAK` attempts all started from the same checkpoint and died
    without writing anything, the last one's error looks like a file that cannot be read
    (or names the checkpoint), and no attempt ever got past that checkpoint.
    """
    streak = history[-UNLOADABLE_STREAK:]
    suspect = streak[-1].checkpoint_before
    if suspect is None or len(streak) < UNLOADABLE_STREAK or not _died_loading(history, len(history) - 1):
        return None
    if any(r.reason not in LOAD_FAILURES or r.new_checkpoint or r.checkpoint_before != suspect for r in streak):
        return None
    return suspect


def _died_loading(history: Sequence[AttemptRecord], index: int) -> bool:
    """`history[index]` died, it seems, loading a checkpoint no attempt up to it got past.

    Such deaths do not spend the restart budget: the answer to them is setting the
    checkpoint aside, after `UNLOADABLE_STREAK` of them in a row.
    """
    record = history[index]
    suspect = record.checkpoint_before
    if suspect is None or record.reason not in LOAD_FAILURES or record.new_checkpoint:
        return False
    if any(r.checkpoint_before == suspect and r.new_checkpoint for r in history[: index + 1]):
        return False
    return any(sign in record.detail for sign in UNLOADABLE_SIGNS) or Path(suspect).name in record.detail


def _deaths_at_load(history: Sequence[AttemptRecord]) -> list[bool]:
    return [_died_loading(history, i) for i in range(len(history))]


def _set_aside(suspect: str, checkpoints: Sequence[str], history: Sequence[AttemptRecord]) -> Decision:
    last = history[-1]
    error = _error_of(last.detail)
    deaths = zip(history, _deaths_at_load(history))
    if _trailing(list(deaths), lambda death: death[0].checkpoint_before == suspect and death[1]) > UNLOADABLE_STREAK:
        # It was set aside after the first streak, and still a later attempt found it.
        return Decision(Action.FAIL, f"{suspect} cannot be loaded ({error}) and could not be moved to quarantine/")
    older = [name for name in checkpoints if name != suspect]
    if older:
        return Decision(Action.RESTART, f"{suspect} cannot be loaded ({error}): moved to quarantine/; "
                                        f"resuming from {older[0]}", quarantine=suspect)
    return Decision(Action.FAIL, f"{suspect} cannot be loaded ({error}) and there is no older checkpoint; "
                                 f"it was moved to quarantine/ (submit with --fresh to start over)", quarantine=suspect)


def _error_of(detail: str) -> str:
    """`exit 1: EOFError: Ran out of input` → `EOFError: Ran out of input`."""
    return detail.split(": ", 1)[1] if detail.startswith(("exit ", "killed by ")) and ": " in detail else detail


def _sentence(detail: str) -> str:
    text = _error_of(detail).strip()
    return text if not text or text.endswith((".", "!", "?")) else f"{text}."


def _after_cuda_oom(
    history: Sequence[AttemptRecord], policy: RestartPolicy, job_checkpoints: bool, jitter: float,
    batch: Batch, batch_size: BatchSize,
) -> Decision:
    smaller = batch.after_oom(batch_size.factor, min_micro=batch_size.min_micro)
    if smaller is None:
        return Decision(Action.FAIL, f"cuda_oom at micro-batch {batch.micro}, and no smaller micro-batch "
                                     f"≥ min_micro {batch_size.min_micro} divides the global batch {batch.global_batch}")
    answered = [*history[:-1], replace(history[-1], changed_config=True)]
    decision = _after_failure(answered, policy, job_checkpoints, jitter)
    return replace(decision, batch=smaller) if decision.action is Action.RESTART else decision


def restart_budget(policy: RestartPolicy, reason: EndReason) -> tuple[int, frozenset[EndReason]]:
    """How many restarts `reason` may use, and which reasons draw on the same budget.

    A reason with its own budget in `restart.on` counts alone; the rest share
    `max_restarts`.
    """
    own = getattr(policy.on, str(reason), None)
    if own is not None:
        return own, frozenset({reason})
    shared = frozenset(r for r in FAILURES if getattr(policy.on, str(r), None) is None)
    return policy.max_restarts, shared


def _after_failure(
    history: Sequence[AttemptRecord], policy: RestartPolicy, job_checkpoints: bool, jitter: float
) -> Decision:
    last = history[-1]
    budget, drawing = restart_budget(policy, last.reason)
    own_budget = getattr(policy.on, str(last.reason), None) is not None
    loading = _deaths_at_load(history)
    # A failure answered by a new configuration (a smaller micro-batch) spends the
    # shared budget only if the reason has no budget of its own; a death at load spends none.
    failures = sum(1 for a, at_load in zip(history, loading)
                   if a.reason in drawing and not at_load and (own_budget or not a.changed_config))
    if failures > budget:
        return Decision(Action.FAIL, f"{last.reason}; gave up after {budget} restarts")
    if last.changed_config and not own_budget:
        return Decision(Action.RESTART, f"{last.reason}; restarting at once with a new configuration")
    if last.changed_config:
        return Decision(Action.RESTART, f"{last.reason}; restart {failures} of {budget} at once with a new configuration")
    streak = _trailing_failures_without_progress(history, loading, policy, job_checkpoints)
    if policy.crash_loop and streak >= policy.crash_loop:
        return Decision(Action.FAIL, f"crash loop: {streak} attempts in a row died without progress")
    # The backoff starts over after an attempt that made progress.
    consecutive = _trailing(history, lambda a: a.reason in FAILURES and not a.new_checkpoint)
    delay = backoff_delay(policy, consecutive, jitter)
    if loading[-1]:
        return Decision(Action.RESTART, f"{last.reason} loading {last.checkpoint_before} ({_error_of(last.detail)}); "
                                        f"trying it once more in {delay:.1f}s before setting it aside "
                                        f"(not counted against the restart budget)", delay)
    return Decision(Action.RESTART, f"{last.reason}; restart {failures} of {budget} in {delay:.1f}s", delay)


def backoff_delay(policy: RestartPolicy, consecutive_failures: int, jitter: float) -> float:
    """Exponential backoff capped at policy.max, spread by ±policy.jitter."""
    exponent = min(max(0, consecutive_failures - 1), 64)  # past 2**64 the cap has long been reached
    base = min(policy.max, policy.initial * policy.factor ** exponent)
    spread = 1.0 + policy.jitter * (2.0 * jitter - 1.0)
    return max(0.0, min(policy.max, base * spread))


def _trailing_failures_without_progress(
    history: Sequence[AttemptRecord], loading: Sequence[bool], policy: RestartPolicy, job_checkpoints: bool
) -> int:
    """Failures in a row without progress; deaths at load are answered by a quarantine, not counted."""
    count = 0
    for record, at_load in zip(reversed(history), reversed(loading)):
        if at_load:
            continue
        if record.reason not in FAILURES or record.progressed(job_checkpoints, policy.min_uptime):
            break
        count += 1
    return count


def _trailing(history: Sequence[AttemptRecord], predicate) -> int:
    count = 0
    for attempt in reversed(history):
        if not predicate(attempt):
            break
        count += 1
    return count
