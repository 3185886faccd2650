"""A checkpoint that kills every attempt at load is set aside without spending the restart budget.

Issue 10: with `max_restarts: 1` the torn `last_model.pth` of a guide-style script once
ended the job "crash; gave up after 1 restarts" before it was ever set aside. Real store
and files, fake launcher and clock (as tests/test_attempt_endings.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fakes import T0, World
from trainsup.jobs.states import JobState

GUIDE_RESUME = {"args": ["--resume", "{checkpoint}"], "checkpoint": "*.pth"}
TORN = "Traceback (most recent call last):\nEOFError: Ran out of input\n"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def end(world: World, job_id: str, **ended) -> None:
    world.run_once(job_id, **ended)
    world.end_backoff(job_id)


def submit(world: World) -> tuple[str, Path]:
    job_id = world.submit("guide", resume=GUIDE_RESUME, restart={"max_restarts": 1, "jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    return job_id, checkpoints


def killed_while_saving(world: World, job_id: str, checkpoints: Path) -> None:
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.clock.advance(30.0)
    (checkpoints / "last_model.pth").write_bytes(b"")  # SIGKILL inside torch.save
    os.utime(checkpoints / "last_model.pth", (world.clock.time(), world.clock.time()))
    world.job_ended(plan, signal=int(signal.SIGKILL))
    world.poll()
    world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")


def test_with_max_restarts_1_the_torn_file_is_quarantined_and_the_job_fails_with_one_sentence(world: World) -> None:
    job_id, checkpoints = submit(world)
    killed_while_saving(world, job_id, checkpoints)
    for _ in range(2):
        end(world, job_id, exit_code=1, log=TORN)
    job = world.job(job_id)
    assert job.state is JobState.FAILED, job.result
    assert job.result == ("last_model.pth cannot be loaded (EOFError: Ran out of input) and there is no older "
                          "checkpoint; it was moved to quarantine/ (submit with --fresh to start over)")
    assert (checkpoints / "quarantine" / "last_model.pth").exists()
    assert len(world.store.attempts(job_id)) == 3
    decisions = [e.message for e in world.store.events(job_id) if e.kind == "decision"]
    assert "not counted against the restart budget" in decisions[1], decisions


def test_with_max_restarts_1_an_older_file_is_used_after_the_quarantine(world: World) -> None:
    job_id, checkpoints = submit(world)
    (checkpoints / "epoch-2.pth").write_bytes(b"intact")
    os.utime(checkpoints / "epoch-2.pth", (T0 - 100, T0 - 100))
    killed_while_saving(world, job_id, checkpoints)
    for _ in range(2):
        end(world, job_id, exit_code=1, log=TORN)
    assert world.job(job_id).state is JobState.QUEUED
    plan = world.start(job_id)
    assert plan.command[-2:] == ["--resume", str(checkpoints / "epoch-2.pth")]
