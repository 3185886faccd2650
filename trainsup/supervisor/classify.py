"""Why did an attempt end? One pure function from an observation to one reason."""

from __future__ import annotations

import re
import signal

from trainsup.jobs.states import EndReason
from trainsup.supervisor.observation import Observation

CUDA_OOM_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|HIP out of memory"
)


def classify(seen: Observation) -> EndReason:
    """The one reason for an ended attempt; the order of the checks is the contract."""
    if seen.spawn_error:
        return EndReason.SPAWN_FAILED
    if seen.host_restart:
        return EndReason.HOST_RESTART
    if seen.never_started:
        return EndReason.CANCELLED if seen.stop_requested == "cancel" else EndReason.INTERRUPTED
    if seen.lost:
        return EndReason.LOST
    if seen.stop_requested == "cancel":
        return EndReason.CANCELLED  # whatever the exit status
    # A stop we asked for beats exit 75 and exit 0: a job that answers our SIGTERM by
    # exiting 0 without saying it finished (Lightning does) was interrupted, not done.
    if seen.stop_requested == "shutdown" and not seen.declared("finished"):
        return EndReason.INTERRUPTED
    if seen.exit_code == 0:
        return EndReason.SUCCEEDED
    # It said it finished, then our stop's SIGTERM caught it on its way out (its session had
    # already given the default handler back): the work is done, its last checkpoint final.
    if seen.stop_requested == "shutdown" and seen.declared("finished") and seen.signal == signal.SIGTERM:
        return EndReason.SUCCEEDED
    if seen.saved_at_a_stop:  # exit 75, or torchrun's exit 1 after its workers exited 75
        return EndReason.PREEMPTED
    if seen.declared("config_error"):
        return EndReason.CONFIG_ERROR
    if seen.hang_verdict:
        return EndReason.HANG
    if seen.declared("oom") or CUDA_OOM_PATTERNS.search(seen.log_tail):
        return EndReason.CUDA_OOM
    if seen.signal == signal.SIGKILL and (seen.oom_kills or 0) > 0:
        return EndReason.HOST_OOM
    return EndReason.CRASH
