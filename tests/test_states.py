"""The job state machine: every pair of states, allowed or not."""

from __future__ import annotations

import itertools

import pytest

from trainsup.errors import IllegalTransitionError, TrainsupError
from trainsup.jobs.states import TERMINAL_STATES, TRANSITIONS, EndReason, JobState, check_transition

S = JobState
ALL_PAIRS = list(itertools.product(JobState, JobState))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


def test_the_table_has_the_edges_we_mean() -> None:
    """A change to the table must be a deliberate change to this test."""
    after_attempt = {S.SUCCEEDED, S.FAILED, S.BACKOFF, S.QUEUED, S.HELD}
    assert TRANSITIONS == {
        S.QUEUED: {S.STARTING, S.HELD, S.CANCELLED, S.FAILED},  # failed: can never be placed
        S.HELD: {S.QUEUED, S.CANCELLED},
        S.STARTING: {S.RUNNING, S.STOPPING} | after_attempt,
        S.RUNNING: {S.STOPPING} | after_attempt,
        S.BACKOFF: {S.QUEUED, S.HELD, S.CANCELLED},
        S.STOPPING: {S.CANCELLED} | after_attempt,
        S.SUCCEEDED: {S.QUEUED},
        S.FAILED: {S.QUEUED},
        S.CANCELLED: {S.QUEUED},
    }
    assert len(ALLOWED) + len(FORBIDDEN) == len(JobState) ** 2 == 81


@pytest.mark.parametrize("current, target", ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed(current: JobState, target: JobState) -> None:
    check_transition(current, target)


@pytest.mark.parametrize("current, target", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden(current: JobState, target: JobState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"from {current} to {target}"):
        check_transition(current, target)


def test_illegal_transition_is_a_user_facing_error() -> None:
    assert issubclass(IllegalTransitionError, TrainsupError)


@pytest.mark.parametrize("state", JobState)
def test_no_state_goes_to_itself(state: JobState) -> None:
    assert state not in TRANSITIONS[state]


def test_terminal_states() -> None:
    assert TERMINAL_STATES == {S.SUCCEEDED, S.FAILED, S.CANCELLED}
    assert {s for s in JobState if s.is_terminal} == TERMINAL_STATES


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_a_terminal_state_only_leaves_on_restart(state: JobState) -> None:
    assert TRANSITIONS[state] == {S.QUEUED}


def test_live_attempt_states() -> None:
    assert {s for s in JobState if s.has_live_attempt} == {S.STARTING, S.RUNNING, S.STOPPING}


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_a_live_attempt_is_cancelled_only_through_stopping(state: JobState) -> None:
    assert S.CANCELLED not in TRANSITIONS[state]
    assert S.STOPPING in TRANSITIONS[state]


def test_only_stopping_or_waiting_states_reach_cancelled() -> None:
    assert {a for a, b in ALLOWED if b is S.CANCELLED} == {S.QUEUED, S.HELD, S.BACKOFF, S.STOPPING}


def test_only_an_unplaceable_job_fails_without_an_attempt() -> None:
    assert {a for a, b in ALLOWED if b is S.FAILED} == {S.QUEUED, S.STARTING, S.RUNNING, S.STOPPING}


def test_only_queued_starts() -> None:
    assert {a for a, b in ALLOWED if b is S.STARTING} == {S.QUEUED}


def test_every_state_is_reachable_from_queued() -> None:
    seen, frontier = {S.QUEUED}, [S.QUEUED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()] - seen:
            seen.add(nxt)
            frontier.append(nxt)
    assert seen == set(JobState)


def test_values_are_the_strings_we_store() -> None:
    assert [str(s) for s in JobState] == [
        "queued", "held", "starting", "running", "backoff", "stopping", "succeeded", "failed", "cancelled",
    ]
    assert JobState("running") is S.RUNNING


def test_end_reasons_are_the_strings_we_store() -> None:
    assert {str(r) for r in EndReason} == {
        "succeeded", "preempted", "crash", "cuda_oom", "host_oom", "hang", "cancelled",
        "interrupted", "host_restart", "lost", "spawn_failed", "config_error",
    }
