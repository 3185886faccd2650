"""Why did an attempt end? One pure function from observed facts to one reason."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from trainsup.jobs.states import EndReason

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on request, wants to be resumed

CUDA_OOM_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|HIP out of memory"
)


@dataclass(frozen=True)
class AttemptFacts:
    """What the daemon observed about one ended attempt."""

    exit_code: int | None
    signal: int | None
    spawn_error: str | None = None
    never_started: bool = False  # stopped before the job was started (e.g. waiting for its lock)
    trainer_exit: dict[str, Any] | None = None  # exit.json written by trainsup.trainer
    log_tail: str = ""
    stop_requested: str | None = None  # "cancel" or "shutdown" when we asked it to stop
    hang_detected: bool = False
    oom_kills_delta: int | None = None  # the cgroup's oom_kill counter, end minus start


def classify(facts: AttemptFacts) -> EndReason:
    if facts.spawn_error:
        return EndReason.SPAWN_FAILED
    if facts.never_started:
        return EndReason.CANCELLED if facts.stop_requested == "cancel" else EndReason.INTERRUPTED
    if facts.exit_code == 0:
        return EndReason.SUCCEEDED
    if facts.stop_requested == "cancel":
        return EndReason.CANCELLED
    if facts.stop_requested == "shutdown":
        return EndReason.INTERRUPTED
    if facts.exit_code == EXIT_PREEMPTED:
        return EndReason.PREEMPTED
    if facts.hang_detected:
        return EndReason.HANG
    trainer_reason = (facts.trainer_exit or {}).get("reason")
    if trainer_reason == "oom" or CUDA_OOM_PATTERNS.search(facts.log_tail):
        return EndReason.CUDA_OOM
    if facts.signal == signal.SIGKILL and (facts.oom_kills_delta or 0) > 0:
        return EndReason.HOST_OOM
    return EndReason.CRASH


def describe_exit(exit_code: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    if exit_code is None:
        return "no exit status"
    return f"exit {exit_code}"
