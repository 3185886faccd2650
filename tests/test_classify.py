"""classify(): the one reason an attempt ended, from what the daemon observed."""

from __future__ import annotations

import signal

import pytest

from trainsup.contracts import EXIT_PREEMPTED, TrainerExit, describe_exit
from trainsup.jobs.states import EndReason
from trainsup.supervisor.classify import classify
from trainsup.supervisor.observation import Observation

R = EndReason
KILL, TERM, SEGV = int(signal.SIGKILL), int(signal.SIGTERM), int(signal.SIGSEGV)


def facts(exit_code: int | None = 1, sig: int | None = None, *, hang_detected: bool = False,
          trainer_exit: dict | None = None, oom_kills_delta: int | None = None, **kwargs) -> Observation:
    return Observation(
        ended_at=0.0, exit_code=exit_code, signal=sig,
        hang_verdict="no heartbeat for 700 s during train" if hang_detected else None,
        trainer_exit=TrainerExit.from_json(trainer_exit), oom_kills=oom_kills_delta, **kwargs,
    )


# Every way the daemon may see an attempt end; each row is one reason.
CASES = [
    ("exit 0", facts(0), R.SUCCEEDED),
    ("exit 75", facts(EXIT_PREEMPTED), R.PREEMPTED),
    ("exit 1", facts(1), R.CRASH),
    ("exit 2", facts(2), R.CRASH),
    ("exit 137 without cgroup", facts(137), R.CRASH),
    ("SIGSEGV", facts(None, SEGV), R.CRASH),
    ("SIGTERM from outside", facts(None, TERM), R.CRASH),
    ("SIGKILL without an oom kill", facts(None, KILL), R.CRASH),
    ("SIGKILL, oom counter unknown", facts(None, KILL, oom_kills_delta=None), R.CRASH),
    ("SIGKILL, oom counter unchanged", facts(None, KILL, oom_kills_delta=0), R.CRASH),
    ("SIGKILL after a host oom kill", facts(None, KILL, oom_kills_delta=1), R.HOST_OOM),
    ("SIGTERM with an oom kill elsewhere", facts(None, TERM, oom_kills_delta=1), R.CRASH),
    ("cancelled", facts(None, TERM, stop_requested="cancel"), R.CANCELLED),
    ("stopped on shutdown", facts(None, TERM, stop_requested="shutdown"), R.INTERRUPTED),
    ("hang", facts(None, KILL, hang_detected=True), R.HANG),
    ("spawn failed", facts(None, None, spawn_error="No such file or directory: 'trian.py'"), R.SPAWN_FAILED),
    ("cuda oom in the log", facts(1, log_tail="RuntimeError: CUDA out of memory. Tried to allocate"), R.CUDA_OOM),
    ("trainer says oom", facts(1, trainer_exit={"reason": "oom", "step": 10, "detail": "x"}), R.CUDA_OOM),
    ("monitor vanished", facts(None, lost=True), R.LOST),
    ("machine went down", facts(None, host_restart=True), R.HOST_RESTART),
    ("stopped before it started", facts(None, never_started=True, stop_requested="shutdown"), R.INTERRUPTED),
    ("daemon died before starting it", facts(None, never_started=True), R.INTERRUPTED),
    ("cancelled before it started", facts(None, never_started=True, stop_requested="cancel"), R.CANCELLED),
    ("the job says no restart can fix it", facts(1, trainer_exit={"reason": "config_error", "detail": "x"}),
     R.CONFIG_ERROR),
]


@pytest.mark.parametrize("observed, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(observed: Observation, reason: EndReason) -> None:
    assert classify(observed) is reason


def test_every_reason_is_reachable() -> None:
    """classify() is the only producer of a reason: every reason comes out of it."""
    assert {reason for _, _, reason in CASES} == set(EndReason)


def test_how_the_attempt_ended_beats_what_it_left_behind() -> None:
    """No exit status to read: the log tail or exit.json of a lost attempt decide nothing."""
    left_behind = dict(trainer_exit={"reason": "oom"}, log_tail="CUDA out of memory", hang_detected=True)
    assert classify(facts(None, lost=True, **left_behind)) is R.LOST
    assert classify(facts(None, host_restart=True, **left_behind)) is R.HOST_RESTART
    assert classify(facts(None, host_restart=True, spawn_error="x")) is R.SPAWN_FAILED


# --- precedence ------------------------------------------------------------------------

EVERYTHING_ELSE = dict(
    stop_requested="cancel",
    hang_detected=True,
    trainer_exit={"reason": "oom"},
    log_tail="CUDA out of memory",
    oom_kills_delta=3,
)


def test_exit_0_beats_what_the_job_left_behind() -> None:
    left_behind = {k: v for k, v in EVERYTHING_ELSE.items() if k != "stop_requested"}
    assert classify(facts(0, **left_behind)) is R.SUCCEEDED


def test_cancel_ends_cancelled_whatever_the_exit_status() -> None:
    assert classify(facts(0, **EVERYTHING_ELSE)) is R.CANCELLED
    assert classify(facts(0, stop_requested="cancel", trainer_exit={"reason": "finished"})) is R.CANCELLED


def test_exit_0_after_our_stop_is_an_interruption_unless_the_job_finished() -> None:
    """Lightning answers SIGTERM by exiting 0 without saving: that is not a finished run."""
    assert classify(facts(0, stop_requested="shutdown")) is R.INTERRUPTED
    assert classify(facts(0, stop_requested="shutdown", trainer_exit={"reason": "finished"})) is R.SUCCEEDED
    assert classify(facts(0)) is R.SUCCEEDED  # an outside SIGTERM, then exit 0: a success


def test_a_job_that_finished_then_met_our_stop_on_its_way_out_succeeded() -> None:
    """Seen under Slurm: the job wrote its last checkpoint and exit.json "finished", closed its
    session, and the stop for the time limit came while the interpreter was exiting."""
    finished = {"reason": "finished"}
    assert classify(facts(None, TERM, stop_requested="shutdown", trainer_exit=finished)) is R.SUCCEEDED
    assert classify(facts(None, TERM, stop_requested="shutdown")) is R.INTERRUPTED  # did not say so
    assert classify(facts(None, TERM, trainer_exit=finished)) is R.CRASH  # not our stop: someone else's
    assert classify(facts(None, KILL, stop_requested="shutdown", trainer_exit=finished)) is R.CRASH  # hung on the way out


def test_a_config_error_is_said_by_the_job() -> None:
    assert classify(facts(1, trainer_exit={"reason": "config_error", "detail": "size mismatch"})) is R.CONFIG_ERROR
    assert classify(facts(1, log_tail="RuntimeError: size mismatch for fc.weight")) is R.CRASH


def test_a_spawn_error_beats_an_exit_code() -> None:
    assert classify(facts(0, spawn_error="Permission denied")) is R.SPAWN_FAILED


def test_a_stop_we_asked_for_beats_exit_75() -> None:
    """A job that checkpoints on our SIGTERM and exits 75 ended because we stopped it."""
    assert classify(facts(EXIT_PREEMPTED, **EVERYTHING_ELSE)) is R.CANCELLED
    assert classify(facts(EXIT_PREEMPTED, **{**EVERYTHING_ELSE, "stop_requested": "shutdown"})) is R.INTERRUPTED
    assert classify(facts(EXIT_PREEMPTED, trainer_exit={"reason": "preempted"})) is R.PREEMPTED


@pytest.mark.parametrize("sig", [TERM, KILL])
def test_cancel_beats_crash(sig: int) -> None:
    assert classify(facts(None, sig, stop_requested="cancel")) is R.CANCELLED
    assert classify(facts(1, stop_requested="cancel")) is R.CANCELLED


def test_cancel_beats_hang_and_oom() -> None:
    assert classify(facts(None, KILL, **EVERYTHING_ELSE)) is R.CANCELLED


def test_shutdown_beats_hang_and_oom() -> None:
    assert classify(facts(None, KILL, **{**EVERYTHING_ELSE, "stop_requested": "shutdown"})) is R.INTERRUPTED


def test_hang_beats_oom() -> None:
    assert classify(facts(None, KILL, hang_detected=True, log_tail="CUDA out of memory", oom_kills_delta=1)) is R.HANG


def test_cuda_oom_beats_host_oom() -> None:
    assert classify(facts(None, KILL, log_tail="torch.OutOfMemoryError", oom_kills_delta=1)) is R.CUDA_OOM


# --- CUDA out of memory ----------------------------------------------------------------


@pytest.mark.parametrize(
    "log_tail",
    [
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA out of memory.",
        "torch.OutOfMemoryError: CUDA out of memory",
        "torch.OutOfMemoryError",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cudaErrorMemoryAllocation",
        "RuntimeError: HIP out of memory. Tried to allocate",
        "step 1\nstep 2\nTraceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory\n",
    ],
)
def test_cuda_oom_patterns(log_tail: str) -> None:
    assert classify(facts(1, log_tail=log_tail)) is R.CUDA_OOM


@pytest.mark.parametrize(
    "log_tail",
    [
        "",
        "RuntimeError: CUDA error: device-side assert triggered",
        "MemoryError",
        "cuda out of memory",  # torch's message is capitalised; lower case is someone else's text
        "Killed",
    ],
)
def test_not_cuda_oom(log_tail: str) -> None:
    assert classify(facts(1, log_tail=log_tail)) is R.CRASH


@pytest.mark.parametrize("trainer_exit", [None, {}, {"reason": "crash"}, {"reason": "finished"}, {"step": 3}])
def test_trainer_exit_other_than_oom_is_a_crash(trainer_exit: dict | None) -> None:
    assert classify(facts(1, trainer_exit=trainer_exit)) is R.CRASH


# --- a launcher's exit 1 after its workers saved at a stop -------------------------------

SAVED = {"reason": "preempted", "step": 12, "detail": "SIGTERM: checkpoint step-000000012 saved"}


@pytest.mark.parametrize("exit_code", [1, 2, EXIT_PREEMPTED])
def test_a_launchers_failure_status_after_a_save_at_a_stop_is_preempted(exit_code: int) -> None:
    """torchrun exits 1 when its workers checkpointed and exited 75."""
    assert classify(facts(exit_code, trainer_exit=SAVED)) is R.PREEMPTED


@pytest.mark.parametrize(
    "observed",
    [
        facts(None, KILL, trainer_exit=SAVED),                   # killed: the exit came after, or never
        facts(None, TERM, trainer_exit=SAVED),
        facts(1, trainer_exit={**SAVED, "reason": "finished"}),  # finished, then died at exit: a crash
        facts(1, log_tail="exit code 75 asks to be resumed"),    # the log is not the job's word
    ],
    ids=["sigkill", "sigterm", "finished", "log-only"],
)
def test_only_exit_json_preempted_with_an_exit_status_reads_as_preempted(observed: Observation) -> None:
    assert classify(observed) is R.CRASH


def test_a_stop_we_asked_for_and_a_cancel_beat_a_save_at_a_stop() -> None:
    assert classify(facts(1, trainer_exit=SAVED, stop_requested="shutdown")) is R.INTERRUPTED
    assert classify(facts(1, trainer_exit=SAVED, stop_requested="cancel")) is R.CANCELLED
    assert classify(facts(0, trainer_exit=SAVED)) is R.SUCCEEDED  # exit 0 stays the job's word


# --- describe_exit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "exit_code, sig, text",
    [
        (0, None, "exit 0"),
        (75, None, "exit 75"),
        (None, KILL, "killed by SIGKILL"),
        (None, TERM, "killed by SIGTERM"),
        (None, 200, "killed by signal 200"),
        (None, None, "no exit status"),
    ],
)
def test_describe_exit(exit_code: int | None, sig: int | None, text: str) -> None:
    assert describe_exit(exit_code, sig) == text
