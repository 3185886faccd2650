"""decide(): what happens after an attempt ends. Pure and table-driven."""

from __future__ import annotations

import pytest

from trainsup.batch import Batch
from trainsup.jobs.spec import BatchSize, RestartPolicy
from trainsup.jobs.states import EndReason
from trainsup.jobs.store import Attempt
from trainsup.supervisor.policy import FAILURES, Action, AttemptRecord, backoff_delay, decide, records_of

R = EndReason
NO_JITTER = 0.5


def attempt(reason: EndReason = R.CRASH, uptime: float = 1.0, checkpoint: bool = False, changed: bool = False) -> AttemptRecord:
    return AttemptRecord(reason=reason, uptime=uptime, new_checkpoint=checkpoint, changed_config=changed)


def crashes(n: int, **kwargs) -> list[AttemptRecord]:
    return [attempt(R.CRASH, **kwargs) for _ in range(n)]


def policy(**fields) -> RestartPolicy:
    return RestartPolicy(**{"jitter": 0.0, **fields})


# --- the simple endings --------------------------------------------------------------


def test_success() -> None:
    decision = decide([attempt(R.SUCCEEDED)], policy())
    assert decision.action is Action.SUCCEED and decision.delay == 0


def test_success_after_failures() -> None:
    assert decide([*crashes(3), attempt(R.SUCCEEDED)], policy(max_restarts=1)).action is Action.SUCCEED


def test_cancel_ends_cancelled_whatever_the_ending() -> None:
    assert decide([attempt(R.SUCCEEDED)], policy(), cancel_requested=True).action is Action.CANCEL


@pytest.mark.parametrize("reason", [*sorted(FAILURES), R.PREEMPTED, R.INTERRUPTED, R.HOST_RESTART, R.SPAWN_FAILED])
def test_cancel_wins_over_every_other_ending(reason: EndReason) -> None:
    assert decide([attempt(reason)], policy(), cancel_requested=True).action is Action.CANCEL


def test_cancelled_attempt_cancels_the_job() -> None:
    assert decide([attempt(R.CANCELLED)], policy()).action is Action.CANCEL


def test_spawn_failed_fails_at_once() -> None:
    decision = decide([attempt(R.SPAWN_FAILED)], policy(max_restarts=100, crash_loop=0))
    assert decision.action is Action.FAIL
    assert "could not be started" in decision.message


# --- preemption ----------------------------------------------------------------------


def test_preempted_restarts_at_once() -> None:
    decision = decide([attempt(R.PREEMPTED)], policy(initial=10, max=60))
    assert (decision.action, decision.delay) == (Action.RESTART, 0.0)


def test_preemptions_do_not_count_against_max_restarts() -> None:
    history = [attempt(R.PREEMPTED) for _ in range(50)]
    assert decide(history, policy(max_restarts=0)).action is Action.RESTART
    history.append(attempt(R.CRASH, uptime=1000))
    assert decide(history, policy(max_restarts=1, crash_loop=0)).action is Action.RESTART


def test_preemption_breaks_a_crash_streak_and_the_backoff() -> None:
    history = [*crashes(2), attempt(R.PREEMPTED), attempt(R.CRASH)]
    decision = decide(history, policy(crash_loop=2, initial=1, factor=2, max=60))
    assert decision.action is Action.RESTART
    assert decision.delay == 1.0


# --- interrupted, host restart --------------------------------------------------------


@pytest.mark.parametrize("reason", [R.INTERRUPTED, R.HOST_RESTART])
def test_resumes_later(reason: EndReason) -> None:
    decision = decide([*crashes(5), attempt(reason)], policy(max_restarts=0))
    assert (decision.action, decision.delay) == (Action.REQUEUE, 0.0)


def test_host_restart_with_hold() -> None:
    decision = decide([attempt(R.HOST_RESTART)], policy(), hold_after_host_restart=True)
    assert decision.action is Action.HOLD


def test_hold_applies_only_to_a_host_restart() -> None:
    decision = decide([attempt(R.INTERRUPTED)], policy(), hold_after_host_restart=True)
    assert decision.action is Action.REQUEUE


# --- max_restarts ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(FAILURES))
def test_every_failure_kind_restarts(reason: EndReason) -> None:
    decision = decide([attempt(reason)], policy())
    assert decision.action is Action.RESTART and decision.delay > 0


@pytest.mark.parametrize(
    "max_restarts, failures, action",
    [
        (0, 1, Action.FAIL),
        (1, 1, Action.RESTART),
        (1, 2, Action.FAIL),
        (5, 5, Action.RESTART),
        (5, 6, Action.FAIL),
        (20, 20, Action.RESTART),
        (20, 21, Action.FAIL),
    ],
)
def test_max_restarts_boundary(max_restarts: int, failures: int, action: Action) -> None:
    # Each attempt made progress, so only max_restarts can stop the job.
    history = crashes(failures, checkpoint=True)
    decision = decide(history, policy(max_restarts=max_restarts, crash_loop=1), job_checkpoints=True)
    assert decision.action is action
    if action is Action.FAIL:
        assert f"gave up after {max_restarts} restarts" in decision.message
    else:
        assert f"restart {failures} of {max_restarts}" in decision.message


def test_max_restarts_counts_failures_that_are_not_in_a_row() -> None:
    history = [attempt(R.CRASH, checkpoint=True), attempt(R.PREEMPTED), attempt(R.CRASH, checkpoint=True)]
    assert decide(history, policy(max_restarts=1, crash_loop=0)).action is Action.FAIL


# --- crash loops -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "crash_loop, streak, action",
    [(1, 1, Action.FAIL), (2, 1, Action.RESTART), (2, 2, Action.FAIL), (3, 2, Action.RESTART), (3, 3, Action.FAIL)],
)
def test_crash_loop_with_checkpoints(crash_loop: int, streak: int, action: Action) -> None:
    history = [attempt(R.CRASH, checkpoint=True), *crashes(streak, uptime=10_000)]
    decision = decide(history, policy(max_restarts=100, crash_loop=crash_loop), job_checkpoints=True)
    assert decision.action is action
    if action is Action.FAIL:
        assert f"crash loop: {streak} attempts" in decision.message


def test_a_checkpoint_resets_the_streak() -> None:
    history = [*crashes(2), attempt(R.CRASH, checkpoint=True), *crashes(2)]
    assert decide(history, policy(max_restarts=100, crash_loop=3), job_checkpoints=True).action is Action.RESTART
    history.append(attempt(R.CRASH))
    assert decide(history, policy(max_restarts=100, crash_loop=3), job_checkpoints=True).action is Action.FAIL


def test_a_changed_config_counts_as_progress() -> None:
    """An OOM that led to a smaller micro-batch is not a crash loop."""
    history = [attempt(R.CUDA_OOM, changed=True) for _ in range(5)]
    assert decide(history, policy(max_restarts=100, crash_loop=2), job_checkpoints=True).action is Action.RESTART


def test_with_checkpoints_uptime_is_not_progress() -> None:
    history = crashes(3, uptime=1e6)
    assert decide(history, policy(max_restarts=100, crash_loop=3), job_checkpoints=True).action is Action.FAIL


@pytest.mark.parametrize(
    "uptime, action", [(0.0, Action.FAIL), (29.9, Action.FAIL), (30.0, Action.RESTART), (3600.0, Action.RESTART)]
)
def test_without_checkpoints_min_uptime_is_progress(uptime: float, action: Action) -> None:
    history = crashes(3, uptime=uptime)
    decision = decide(history, policy(max_restarts=100, crash_loop=3, min_uptime=30), job_checkpoints=False)
    assert decision.action is action


def test_crash_loop_zero_turns_the_check_off() -> None:
    history = crashes(50)
    assert decide(history, policy(max_restarts=50, crash_loop=0), job_checkpoints=True).action is Action.RESTART
    history.append(attempt(R.CRASH))
    assert decide(history, policy(max_restarts=50, crash_loop=0), job_checkpoints=True).action is Action.FAIL


# --- backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "initial, factor, maximum, consecutive, delay",
    [
        (1, 2, 300, 1, 1),
        (1, 2, 300, 2, 2),
        (1, 2, 300, 3, 4),
        (1, 2, 300, 9, 256),
        (1, 2, 300, 10, 300),
        (1, 2, 300, 50, 300),
        (5, 3, 100, 1, 5),
        (5, 3, 100, 3, 45),
        (5, 3, 100, 4, 100),
        (2, 1, 60, 30, 2),
        (0, 2, 60, 5, 0),
        (7, 2, 7, 3, 7),
    ],
)
def test_backoff_growth(initial: float, factor: float, maximum: float, consecutive: int, delay: float) -> None:
    restart = policy(initial=initial, factor=factor, max=maximum)
    assert backoff_delay(restart, consecutive, NO_JITTER) == pytest.approx(delay)


def test_decide_backs_off_by_the_trailing_failures() -> None:
    restart = policy(initial=1, factor=2, max=300, max_restarts=100, crash_loop=0)
    delays = [decide(crashes(n), restart).delay for n in range(1, 6)]
    assert delays == [1, 2, 4, 8, 16]


def test_a_success_or_preemption_starts_the_backoff_over() -> None:
    restart = policy(initial=1, factor=2, max=300, max_restarts=100, crash_loop=0)
    for between in (R.PREEMPTED, R.INTERRUPTED, R.HOST_RESTART):
        assert decide([*crashes(4), attempt(between), attempt(R.CRASH)], restart).delay == 1


@pytest.mark.parametrize(
    "spread, draw, low, high",
    [
        (0.0, 0.0, 8.0, 8.0),
        (0.0, 0.999, 8.0, 8.0),
        (0.1, 0.0, 7.2, 7.2),
        (0.1, 0.5, 8.0, 8.0),
        (0.1, 0.999, 8.79, 8.8),
        (0.5, 0.0, 4.0, 4.0),
        (0.5, 0.999, 11.98, 12.0),
        (1.0, 0.0, 0.0, 0.0),
        (1.0, 0.999, 15.96, 16.0),
    ],
)
def test_jitter_bounds(spread: float, draw: float, low: float, high: float) -> None:
    restart = policy(initial=1, factor=2, max=300, jitter=spread)
    assert low <= backoff_delay(restart, 4, draw) <= high


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 0.999])
def test_jitter_never_exceeds_max(draw: float) -> None:
    restart = policy(initial=1, factor=2, max=10, jitter=0.5)
    assert 0 <= backoff_delay(restart, 20, draw) <= 10


def test_the_draw_is_the_only_randomness() -> None:
    restart = RestartPolicy()
    history = crashes(2)
    assert decide(history, restart, jitter=0.3) == decide(history, restart, jitter=0.3)
    assert decide(history, restart, jitter=0.0).delay < decide(history, restart, jitter=0.999).delay


def test_decide_does_not_touch_the_history() -> None:
    history = crashes(3)
    snapshot = list(history)
    decide(history, RestartPolicy(), job_checkpoints=True)
    assert history == snapshot


def test_a_very_long_retry_streak_stays_at_max() -> None:
    restart = policy(initial=1, factor=2, max=300, max_restarts=10_000, crash_loop=0)
    assert decide(crashes(1100), restart).delay == 300


# --- per-reason budgets (restart.on) ---------------------------------------------------


def budgets(**on) -> RestartPolicy:
    return policy(max_restarts=2, crash_loop=0, on=on)


def test_a_reason_with_its_own_budget_counts_alone() -> None:
    history = [attempt(R.CUDA_OOM) for _ in range(10)]
    assert decide(history, budgets(cuda_oom=10)).action is Action.RESTART
    assert decide([*history, attempt(R.CUDA_OOM)], budgets(cuda_oom=10)).action is Action.FAIL


def test_own_budgets_do_not_draw_on_max_restarts() -> None:
    history = [*(attempt(R.CUDA_OOM) for _ in range(5)), *crashes(2)]
    assert decide(history, budgets(cuda_oom=10)).action is Action.RESTART
    assert decide([*history, attempt(R.CRASH)], budgets(cuda_oom=10)).action is Action.FAIL


def test_reasons_without_a_budget_share_max_restarts() -> None:
    history = [attempt(R.CRASH), attempt(R.HANG), attempt(R.LOST)]
    decision = decide(history, budgets(cuda_oom=10))
    assert decision.action is Action.FAIL and "gave up after 2 restarts" in decision.message


def test_a_zero_budget_fails_the_first_time() -> None:
    assert decide([attempt(R.HANG)], budgets(hang=0)).action is Action.FAIL


def test_a_new_configuration_restarts_at_once() -> None:
    """A smaller micro-batch after a CUDA OOM: no reason to wait."""
    history = [*crashes(3), attempt(R.CUDA_OOM, changed=True)]
    decision = decide(history, policy(max_restarts=10, crash_loop=2, initial=10, max=60))
    assert (decision.action, decision.delay) == (Action.RESTART, 0.0)


def test_a_new_configuration_does_not_spend_the_shared_budget() -> None:
    """Batch backoff ends by itself at min_micro; max_restarts is for real failures."""
    history = [attempt(R.CUDA_OOM, changed=True) for _ in range(6)]
    assert decide(history, policy(max_restarts=2)).action is Action.RESTART
    assert decide([*history, *crashes(3, checkpoint=True)], policy(max_restarts=2, crash_loop=0)).action is Action.FAIL


def test_a_new_configuration_spends_its_own_budget() -> None:
    history = [attempt(R.CUDA_OOM, changed=True) for _ in range(3)]
    assert decide(history[:2], policy(max_restarts=9, on={"cuda_oom": 2})).action is Action.RESTART
    assert decide(history, policy(max_restarts=9, on={"cuda_oom": 2})).action is Action.FAIL


# --- the batch after a CUDA OOM: decide() carries it ------------------------------------

SPEC_BATCH = BatchSize.model_validate({"global": 256, "micro": 64, "min_micro": 8})


def oom_decision(history, batch: Batch | None, batch_size: BatchSize | None = SPEC_BATCH, **kwargs):
    return decide(history, kwargs.pop("restart", policy(max_restarts=2, initial=10, max=60)),
                  batch=batch, batch_size=batch_size, **kwargs)


# last attempt ran with → action, delay, batch of the next attempt
BATCH_CASES = [
    ("64 → 32", Batch(64, 4), Action.RESTART, 0.0, Batch(32, 8)),
    ("16 → 8, the floor", Batch(16, 16), Action.RESTART, 0.0, Batch(8, 32)),
    ("8 is min_micro: nothing smaller", Batch(8, 32), Action.FAIL, 0.0, None),
]


@pytest.mark.parametrize("last_batch, action, delay, next_batch", [c[1:] for c in BATCH_CASES],
                         ids=[c[0] for c in BATCH_CASES])
def test_cuda_oom_decides_the_next_batch(last_batch, action, delay, next_batch) -> None:
    decision = oom_decision([attempt(R.CUDA_OOM)], last_batch)
    assert (decision.action, decision.delay, decision.batch) == (action, delay, next_batch)


def test_no_smaller_batch_says_why() -> None:
    decision = oom_decision([attempt(R.CUDA_OOM)], Batch(8, 32))
    assert "no smaller micro-batch ≥ min_micro 8" in decision.message


def test_cuda_oom_without_a_batch_section_is_a_plain_failure() -> None:
    decision = oom_decision([attempt(R.CUDA_OOM)], None, None)
    assert (decision.action, decision.delay, decision.batch) == (Action.RESTART, 10.0, None)


def test_the_global_batch_never_changes() -> None:
    batch, history = Batch(64, 4), []
    while True:
        history.append(attempt(R.CUDA_OOM))
        decision = oom_decision(history, batch, batch_size=BatchSize.model_validate({"global": 256, "micro": 64}))
        if decision.batch is None:
            break
        assert decision.batch.global_batch == 256 and decision.batch.micro < batch.micro
        history[-1] = attempt(R.CUDA_OOM, changed=True)
        batch = decision.batch
    assert batch == Batch(1, 256) and decision.action is Action.FAIL


def test_a_smaller_batch_does_not_spend_the_shared_budget() -> None:
    history = [*(attempt(R.CUDA_OOM, changed=True) for _ in range(4)), attempt(R.CUDA_OOM)]
    assert oom_decision(history, Batch(32, 8)).batch == Batch(16, 16)


def test_an_own_cuda_oom_budget_can_stop_the_backoff() -> None:
    history = [attempt(R.CUDA_OOM, changed=True), attempt(R.CUDA_OOM)]
    decision = oom_decision(history, Batch(32, 8), restart=policy(on={"cuda_oom": 1}))
    assert (decision.action, decision.batch) == (Action.FAIL, None)


def test_cancel_wins_over_a_batch_backoff() -> None:
    decision = oom_decision([attempt(R.CUDA_OOM)], Batch(64, 4), cancel_requested=True)
    assert (decision.action, decision.batch) == (Action.CANCEL, None)


@pytest.mark.parametrize("reason", [R.CRASH, R.HANG, R.HOST_OOM, R.SUCCEEDED, R.PREEMPTED])
def test_only_a_cuda_oom_changes_the_batch(reason: EndReason) -> None:
    assert oom_decision([attempt(reason)], Batch(64, 4)).batch is None


# --- records_of(): stored attempts → the records decide() reads -------------------------


def stored(number: int, reason: EndReason | None, started: float, ended: float | None = None,
           before: str | None = None, after: str | None = None, batch: Batch | None = None) -> Attempt:
    return Attempt(job_id="j", number=number, run_dir="", log_path="", boot_id="b", started_at=started,
                   monitor_pid=None, monitor_started=None, job_pid=None, ended_at=ended, exit_code=None,
                   signal=None, reason=reason, detail=None, checkpoint_before=before, checkpoint_after=after,
                   batch=batch, peak_gpu_memory=None)


def test_records_of_reads_uptime_progress_and_batch_changes() -> None:
    attempts = [
        stored(1, R.CUDA_OOM, 100, 110, batch=Batch(64, 4)),
        stored(2, R.CRASH, 120, 150, before=None, after="step-000000010", batch=Batch(32, 8)),
        stored(3, R.CRASH, 160, 161, before="step-000000010", after="step-000000010", batch=Batch(32, 8)),
        stored(4, None, 170),  # still running: not a record
    ]
    assert records_of(attempts) == [
        AttemptRecord(R.CUDA_OOM, 10, new_checkpoint=False, changed_config=True),
        AttemptRecord(R.CRASH, 30, new_checkpoint=True, changed_config=False),
        AttemptRecord(R.CRASH, 1, new_checkpoint=False, changed_config=False, checkpoint_before="step-000000010"),
    ]


def test_records_of_starts_at_a_budget_reset() -> None:
    attempts = [stored(1, R.CRASH, 100, 101), stored(2, R.CRASH, 200, 201), stored(3, R.CRASH, 300, 301)]
    assert len(records_of(attempts, since=200)) == 2
    assert len(records_of(attempts, since=None)) == 3


# --- errors no restart fixes, and the backoff after progress ------------------------------


def test_a_config_error_fails_at_once_with_the_jobs_sentence() -> None:
    last = AttemptRecord(R.CONFIG_ERROR, 3.0, False, detail="exit 1: The checkpoint's fc.weight is [10, 64], the model's [10, 128].")
    decision = decide([last], policy(max_restarts=10))
    assert decision.action is Action.FAIL
    assert decision.message == "The checkpoint's fc.weight is [10, 64], the model's [10, 128]."


def test_the_backoff_starts_over_after_progress() -> None:
    restart = policy(initial=2, factor=2, max=60, max_restarts=10, crash_loop=0)
    progressing = [attempt(R.CRASH, checkpoint=True) for _ in range(5)]
    assert decide(progressing, restart).delay == 2.0
    assert decide([*progressing, attempt(R.CRASH)], restart).delay == 2.0
    assert decide([*progressing, attempt(R.CRASH), attempt(R.CRASH)], restart).delay == 4.0


# --- a checkpoint that kills every attempt at load ---------------------------------------

LOAD_ERROR = "exit 1: RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory"


def died_loading(checkpoint: str | None = "last.ckpt", detail: str = LOAD_ERROR, reason: EndReason = R.CRASH,
                 progressed: bool = False) -> AttemptRecord:
    return AttemptRecord(reason, 2.0, progressed, checkpoint_before=checkpoint, detail=detail)


def quarantine_decision(history, checkpoints=("last.ckpt", "epoch=0-step=50.ckpt")):
    return decide(history, policy(max_restarts=5, crash_loop=3, initial=1), checkpoints=checkpoints)


def test_two_deaths_loading_the_same_checkpoint_set_it_aside_and_resume_from_the_previous() -> None:
    decision = quarantine_decision([died_loading(), died_loading()])
    assert (decision.action, decision.delay, decision.quarantine) == (Action.RESTART, 0.0, "last.ckpt")
    assert "resuming from epoch=0-step=50.ckpt" in decision.message


def test_with_no_older_checkpoint_the_job_fails_with_one_sentence() -> None:
    decision = quarantine_decision([died_loading("last_model.pth", "exit 1: EOFError: Ran out of input")] * 2,
                                   checkpoints=("last_model.pth",))
    assert (decision.action, decision.quarantine) == (Action.FAIL, "last_model.pth")
    assert decision.message == ("last_model.pth cannot be loaded (EOFError: Ran out of input) and there is no older "
                                "checkpoint; it was moved to quarantine/ (submit with --fresh to start over)")


NOT_THE_CHECKPOINT = [
    ("one death is not enough", [died_loading()]),
    ("different checkpoints", [died_loading("a.ckpt"), died_loading("b.ckpt")]),
    ("it wrote something", [died_loading(), died_loading(progressed=True)]),
    ("no checkpoint at start", [died_loading(None), died_loading(None)]),
    ("a hang is not a load failure", [died_loading(reason=R.HANG), died_loading(reason=R.HANG)]),
    ("an unrelated error", [died_loading(detail="exit 1: NameError: name 'modle' is not defined")] * 2),
    ("an attempt once got past it", [died_loading(progressed=True), died_loading(), died_loading()]),
]


@pytest.mark.parametrize("history", [c[1] for c in NOT_THE_CHECKPOINT], ids=[c[0] for c in NOT_THE_CHECKPOINT])
def test_what_does_not_point_at_the_checkpoint(history) -> None:
    assert quarantine_decision(history).quarantine is None


def test_an_error_that_names_the_checkpoint_points_at_it() -> None:
    named = "exit 1: KeyError: 'optimizer' in /data/run/last.ckpt"
    assert quarantine_decision([died_loading(detail=named)] * 2).quarantine == "last.ckpt"


def test_records_of_counts_any_write_as_progress() -> None:
    wrote = stored(1, R.CRASH, 100, 150, before="last.ckpt", after="last.ckpt")
    wrote = Attempt(**{**wrote.__dict__, "newest_write_before": 90.0, "newest_write_after": 140.0})
    idle = Attempt(**{**wrote.__dict__, "number": 2, "newest_write_before": 140.0, "newest_write_after": 140.0})
    assert [r.new_checkpoint for r in records_of([wrote, idle])] == [True, False]


# --- deaths at load spend no restart budget: the answer to them is the quarantine ----------

TORN = "exit 1: EOFError: Ran out of input"
OLDER = ("last_model.pth", "epoch-3.pth")
NONE_OLDER = ("last_model.pth",)
# What left the torn file: a stop during its save (max_restarts 0), a SIGKILL during it (1).
LEFT_IT = {0: AttemptRecord(R.INTERRUPTED, 30.0, True), 1: AttemptRecord(R.CRASH, 30.0, True, detail="killed by SIGKILL")}
SENTENCE = ("last_model.pth cannot be loaded (EOFError: Ran out of input) and there is no older checkpoint; "
            "it was moved to quarantine/ (submit with --fresh to start over)")


def died_on_torn(n: int) -> list[AttemptRecord]:
    return [died_loading("last_model.pth", TORN) for _ in range(n)]


@pytest.mark.parametrize("max_restarts", [0, 1])
@pytest.mark.parametrize(
    "deaths, checkpoints, action, quarantine, message",
    [
        (1, OLDER, Action.RESTART, None, "crash loading last_model.pth (EOFError: Ran out of input); trying it once "
                                         "more in 1.0s before setting it aside (not counted against the restart budget)"),
        (2, OLDER, Action.RESTART, "last_model.pth", "last_model.pth cannot be loaded (EOFError: Ran out of input): "
                                                     "moved to quarantine/; resuming from epoch-3.pth"),
        (2, NONE_OLDER, Action.FAIL, "last_model.pth", SENTENCE),
    ],
    ids=["one death: once more", "two: an older one is left", "two: none is left"],
)
def test_deaths_at_load_are_answered_whatever_the_budget(max_restarts, deaths, checkpoints, action, quarantine,
                                                          message) -> None:
    history = [LEFT_IT[max_restarts], *died_on_torn(deaths)]
    decision = decide(history, policy(max_restarts=max_restarts, crash_loop=1, initial=1), checkpoints=checkpoints)
    assert (decision.action, decision.quarantine, decision.message) == (action, quarantine, message)


@pytest.mark.parametrize("max_restarts, action", [(0, Action.FAIL), (1, Action.FAIL), (2, Action.RESTART)])
def test_after_the_quarantine_other_failures_spend_the_budget_as_before(max_restarts, action) -> None:
    """The SIGKILL that tore the file counts (for max_restarts 1 and 2), the deaths at load do not."""
    from_older = AttemptRecord(R.CRASH, 5.0, False, checkpoint_before="epoch-3.pth", detail="exit 1: ValueError: nan")
    history = [LEFT_IT[min(max_restarts, 1)], *died_on_torn(2), from_older]
    decision = decide(history, policy(max_restarts=max_restarts, crash_loop=0, initial=1), checkpoints=("epoch-3.pth",))
    assert decision.action is action, decision.message
    assert decision.quarantine is None


def test_a_checkpoint_that_could_not_be_moved_fails_the_job_instead_of_looping() -> None:
    decision = decide(died_on_torn(3), policy(max_restarts=0), checkpoints=OLDER)
    assert (decision.action, decision.quarantine) == (Action.FAIL, None)
    assert decision.message == "last_model.pth cannot be loaded (EOFError: Ran out of input) and could not be moved to quarantine/"


def test_a_rewritten_checkpoint_of_the_same_name_gets_its_own_streak() -> None:
    """Set aside, resumed from the older one, written again under the same name, torn again."""
    resumed = AttemptRecord(R.CRASH, 30.0, True, checkpoint_before="epoch-3.pth", detail="killed by SIGKILL")
    history = [*died_on_torn(2), resumed, *died_on_torn(2)]
    decision = decide(history, policy(max_restarts=1), checkpoints=OLDER)
    assert (decision.action, decision.quarantine) == (Action.RESTART, "last_model.pth")
