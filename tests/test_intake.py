"""Intake: each inbox request applied once, in one transaction, with an event. No processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import World
from trainsup.jobs import inbox
from trainsup.jobs.requests import Control
from trainsup.jobs.states import JobState


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def test_a_submission_becomes_a_queued_job_with_its_typed_spec(world: World) -> None:
    job_id = world.submit("train", gpus=0, grace_period="5s", batch_size={"global": 32, "micro": 8})
    job = world.job(job_id)
    assert job.state is JobState.QUEUED
    assert (job.spec.name, job.spec.grace_period, job.spec.batch_size.global_) == ("train", 5.0, 32)
    assert world.events(job_id) == ["submitted"]
    assert inbox.pending(world.state.inbox) == []


def test_a_request_read_twice_is_applied_once(world: World) -> None:
    """The daemon may die after the commit and before removing the file."""
    job_id = world.submit()
    world.control(job_id, Control.HOLD)
    request = inbox.drop(world.state.inbox, {"kind": "control", "job_id": job_id, "action": "release",
                                            "requested_at": world.clock.time()})
    copy = request.read_bytes()
    world.intake.ingest_all(world.clock.time())
    request.write_bytes(copy)
    world.control(job_id, Control.HOLD)
    world.intake.ingest_all(world.clock.time())
    assert world.job(job_id).state is JobState.HELD
    assert world.events(job_id) == ["submitted", "held", "released", "held"]


def test_an_unreadable_request_is_set_aside(world: World) -> None:
    bad = world.state.inbox / "00000000000000000001-bad.json"
    bad.write_text('{"kind": "submit", "job_id": "../../x"')
    world.intake.ingest_all(world.clock.time())
    assert not bad.exists()
    assert (world.state.rejected / bad.name).exists()
    assert world.store.jobs() == []


def test_cancel_of_a_queued_job_ends_it_at_once(world: World) -> None:
    job_id = world.submit()
    world.control(job_id, Control.CANCEL)
    job = world.job(job_id)
    assert (job.state, job.result) == (JobState.CANCELLED, "cancelled on request")
    assert world.launcher.stopped == []


def test_cancel_of_a_finished_job_is_ignored_with_an_event(world: World) -> None:
    job_id = world.submit()
    world.control(job_id, Control.CANCEL)
    world.control(job_id, Control.CANCEL)
    assert world.events(job_id)[-1] == "cancel_ignored"


def test_restart_queues_a_finished_job_with_a_fresh_budget(world: World) -> None:
    job_id = world.submit()
    world.control(job_id, Control.CANCEL)
    world.clock.advance(60)
    world.control(job_id, Control.RESTART)
    job = world.job(job_id)
    assert (job.state, job.result, job.budget_reset_at) == (JobState.QUEUED, None, world.clock.time())


def test_restart_of_a_live_job_is_ignored(world: World) -> None:
    job_id = world.submit()
    world.control(job_id, Control.RESTART)
    assert world.job(job_id).state is JobState.QUEUED
    assert world.events(job_id)[-1] == "restart_ignored"


def test_hold_and_release(world: World) -> None:
    job_id = world.submit()
    world.control(job_id, Control.HOLD)
    assert world.job(job_id).state is JobState.HELD
    world.control(job_id, Control.RELEASE)
    assert world.job(job_id).state is JobState.QUEUED


def test_a_control_request_for_an_unknown_job_changes_nothing(world: World) -> None:
    world.control("nosuchjob", Control.CANCEL)
    assert world.store.jobs() == []
    assert inbox.pending(world.state.inbox) == []
