"""Intake: each inbox request applied once, in one transaction, with an event. No processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

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
    world.control("0badc0de", Control.CANCEL)
    assert world.store.jobs() == []
    assert inbox.pending(world.state.inbox) == []


# --- a hand-written or hostile inbox (issue 12) ------------------------------------------


def valid_submission(world: World, **changes: object) -> dict:
    """What `trainsup submit` drops, as JSON, with `changes` applied to it."""
    text = "name: hand\ncommand: 'true'\n"
    request = {
        "kind": "submit", "job_id": "0123abcd",
        "spec": {"name": "hand", "command": ["/bin/sh", "-c", "true"], "workdir": str(world.state.root),
                 "checkpoint_dir": str(world.state.root / "ckpt")},
        "spec_text": text, "spec_path": str(world.state.root / "job.yaml"),
        "environment": {"PATH": "/usr/bin:/bin"}, "submitted_at": 1.0,
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = request
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return request


DELETE = object()


def drop_raw(world: World, request: object, name: str = "00000000000000000001-hand.json") -> Path:
    path = world.state.inbox / name
    path.write_text(json.dumps(request))
    return path


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


def test_a_valid_hand_written_submission_is_taken(world: World) -> None:
    drop_raw(world, valid_submission(world))
    world.intake.ingest_all(world.clock.time())
    assert world.job("0123abcd").state is JobState.QUEUED


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"job_id": "../../../../tmp/x"}, "job_id"),
        ({"job_id": "../escaped"}, "job_id"),
        ({"job_id": "0123ABCD"}, "job_id"),
        ({"job_id": "0123abcd0"}, "job_id"),
        ({"job_id": 12345678}, "job_id"),
        ({"spec.name": "../x"}, "spec.name"),
        ({"spec.command": ["echo", "a\x00b"]}, "NUL byte"),
        ({"spec.env": {"A": "a\x00b"}}, "NUL byte"),
        ({"spec.gpus": True}, "spec.gpus"),
        ({"spec.gpus": -1}, "spec.gpus"),
        ({"spec.command": ["x" * 200_000]}, "131072 bytes"),
        ({"spec.unknown": 1}, "unknown field 'spec.unknown'"),
        ({"spec.workdir": "relative/dir"}, "spec.workdir must be an absolute path"),
        ({"spec.workdir": DELETE}, "spec.workdir must be an absolute path"),
        ({"spec.checkpoint_dir": "/tmp/../etc"}, "spec.checkpoint_dir"),
        ({"spec.checkpoint_dir": "/"}, "spec.checkpoint_dir"),
        ({"spec_path": "job.yaml"}, "spec_path"),
        ({"spec_text": "x" * (2 << 20)}, "spec_text"),
        ({"environment": {"A=B": "x"}}, "environment"),
        ({"environment": {"A": "x\x00"}}, "environment"),
        ({"environment": {f"V{n}": "x" * 100_000 for n in range(6)}}, "512 KiB"),
        ({"environment": ["PATH=/bin"]}, "environment"),
        ({"submitted_at": "yesterday"}, "submitted_at"),
        ({"submitted_at": 1e999}, "submitted_at"),
        ({"fresh": "yes"}, "fresh"),
        ({"kind": "exec"}, "kind"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_a_bad_submission_is_set_aside_and_never_applied(world: World, changes: dict, needle: str) -> None:
    """`job_id: ../../../../tmp/x` made the daemon write the job dir and launch.json outside
    the state dir; every other field is checked as strictly as a job file."""
    before = files_under(world.state.root.parent)
    path = drop_raw(world, valid_submission(world, **changes))
    with capture_logs() as logs:
        world.intake.ingest_all(world.clock.time())
    (logged,) = [entry for entry in logs if entry["event"] == "set aside a bad inbox request"]
    assert needle in logged["reason"] and "\n" not in logged["reason"], logged
    assert world.store.jobs() == []
    assert not path.exists() and (world.state.rejected / path.name).exists()
    assert files_under(world.state.root.parent) - before == {world.state.rejected / path.name}
    assert inbox.pending(world.state.inbox) == []


def test_secrets_in_a_hand_written_environment_are_not_stored(world: World) -> None:
    shell = {"PATH": "/bin", "HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "s"}
    drop_raw(world, valid_submission(world, environment=shell))
    world.intake.ingest_all(world.clock.time())
    assert world.job("0123abcd").environment == {"PATH": "/bin"}


@pytest.mark.parametrize(
    "request_, needle",
    [
        ({"kind": "control", "job_id": "../../x", "action": "cancel", "requested_at": 1.0}, "job_id"),
        ({"kind": "control", "job_id": "0123abcd", "action": "rm -rf", "requested_at": 1.0}, "action"),
        ({"kind": "control", "job_id": "0123abcd", "action": "cancel", "requested_at": "now"}, "requested_at"),
        ({"kind": "control", "job_id": "0123abcd", "action": "cancel"}, "requested_at"),
        ([1, 2, 3], ""),
        ("just a string", ""),
        (None, ""),
    ],
)
def test_a_bad_control_request_is_set_aside(world: World, request_: object, needle: str) -> None:
    drop_raw(world, valid_submission(world))
    world.intake.ingest_all(world.clock.time())
    path = drop_raw(world, request_, "00000000000000000002-control.json")
    world.intake.ingest_all(world.clock.time())
    assert (world.state.rejected / path.name).exists()
    assert world.job("0123abcd").state is JobState.QUEUED
    assert world.events("0123abcd") == ["submitted"]


def test_a_symlink_fifo_or_folder_in_the_inbox_is_set_aside_untouched(world: World, tmp_path: Path) -> None:
    """Read as untrusted: a link is not followed, a FIFO does not block the daemon."""
    target = tmp_path / "target.json"
    target.write_text(json.dumps(valid_submission(world)))
    (world.state.inbox / "00000000000000000001-link.json").symlink_to(target)
    os.mkfifo(world.state.inbox / "00000000000000000002-fifo.json")
    (world.state.inbox / "00000000000000000003-dir.json").mkdir()
    world.intake.ingest_all(world.clock.time())
    assert world.store.jobs() == []
    assert sorted(p.name for p in world.state.rejected.iterdir()) == [
        "00000000000000000001-link.json", "00000000000000000002-fifo.json", "00000000000000000003-dir.json"]
    assert json.loads(target.read_text())["job_id"] == "0123abcd"
    assert inbox.pending(world.state.inbox) == []


def test_a_huge_or_deeply_nested_request_is_set_aside(world: World) -> None:
    huge = world.state.inbox / "00000000000000000001-huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(64 * 2**20)  # sparse: the size alone refuses it
    drop_raw(world, None, "00000000000000000002-x.json")
    (world.state.inbox / "00000000000000000003-deep.json").write_text("[" * 100_000 + "]" * 100_000)
    world.intake.ingest_all(world.clock.time())
    assert sorted(p.name for p in world.state.rejected.iterdir()) == [
        "00000000000000000001-huge.json", "00000000000000000002-x.json", "00000000000000000003-deep.json"]


def test_fresh_that_cannot_move_the_old_checkpoints_fails_the_job_not_the_daemon(world: World) -> None:
    checkpoint_dir = world.state.root / "ckpt"
    (checkpoint_dir / "step-1").mkdir(parents=True)
    (world.state.root / "ckpt.before-0123abcd" / "in-the-way").mkdir(parents=True)
    drop_raw(world, valid_submission(world, fresh=True))
    world.intake.ingest_all(world.clock.time())
    job = world.job("0123abcd")
    assert job.state is JobState.FAILED and "--fresh: cannot move" in job.result
    assert (checkpoint_dir / "step-1").is_dir()
