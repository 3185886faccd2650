"""Recovery at daemon start: every attempt the store thinks is running is adopted or settled.

A second `World` on the same state dir plays the restarted daemon; the fake launcher
says which monitors are still alive. No process is started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import World
from trainsup.jobs.states import EndReason, JobState
from trainsup.supervisor.recovery import recover


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def running(world: World, name: str = "job", **fields):
    job_id = world.submit(name, **fields)
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    return job_id, plan


def test_an_exit_recorded_while_the_daemon_was_down_is_settled(world: World) -> None:
    job_id, plan = running(world)
    world.job_ended(plan, exit_code=0)
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert after.job(job_id).state is JobState.SUCCEEDED
    assert "recovered" in after.events(job_id)


def test_a_live_monitor_is_re_adopted(world: World) -> None:
    job_id, plan = running(world)
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert job_id in after.attempts.live
    assert after.job(job_id).state is JobState.RUNNING
    assert after.events(job_id)[-1] == "adopted"
    after.job_ended(plan, exit_code=0)
    after.poll()
    assert after.job(job_id).state is JobState.SUCCEEDED


def test_a_monitor_whose_pid_was_never_recorded_is_found(world: World) -> None:
    job_id, plan = running(world)
    pid = world.monitor_pid(plan)
    world.store.update_attempt(job_id, 1, monitor_pid=None, monitor_started=None)
    world.launcher.findable[str(plan.run_dir)] = (pid, float(pid))
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert job_id in after.attempts.live
    assert after.store.attempts(job_id)[0].monitor_pid == pid


def test_a_stop_the_old_daemon_asked_for_is_sent_again(world: World) -> None:
    job_id, plan = running(world)
    world.store.update_job(job_id, stop_requested="cancel")
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert after.launcher.stopped == [world.monitor_pid(plan)]


def test_after_a_reboot_the_attempt_is_a_host_restart_and_requeued(world: World) -> None:
    job_id, plan = running(world)
    plan.log_path.write_text("step 1\n")
    after = world.reborn(boot_id="boot-2")
    after.clock.advance(3600)
    recover(after.store, after.attempts, after.clock.time())
    attempt = after.store.attempts(job_id)[0]
    assert attempt.reason is EndReason.HOST_RESTART
    assert attempt.ended_at < after.clock.time()  # its last sign of life, not the time we noticed
    assert after.job(job_id).state is JobState.QUEUED


def test_after_a_reboot_on_boot_hold_keeps_the_job_held(world: World) -> None:
    job_id, _ = running(world, on_boot="hold")
    after = world.reborn(boot_id="boot-2")
    recover(after.store, after.attempts, after.clock.time())
    assert after.job(job_id).state is JobState.HELD


def test_an_attempt_the_old_daemon_never_launched_is_an_interruption(world: World) -> None:
    job_id = world.submit()
    world.start(job_id)
    world.store.update_attempt(job_id, 1, monitor_pid=None, monitor_started=None)  # died before recording it
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert after.store.attempts(job_id)[0].reason is EndReason.INTERRUPTED
    assert after.job(job_id).state is JobState.QUEUED


def test_a_dead_monitor_without_a_record_is_lost_and_its_job_killed(world: World) -> None:
    job_id, plan = running(world, restart={"jitter": 0})
    world.launcher.alive[world.monitor_pid(plan)] = False
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert after.launcher.orphans_killed == [plan.run_dir]
    assert after.store.attempts(job_id)[0].reason is EndReason.LOST
    assert after.job(job_id).state is JobState.BACKOFF


def test_only_live_attempts_are_touched(world: World) -> None:
    done = world.submit("done")
    done_plan = world.start(done)
    world.job_ended(done_plan, exit_code=0)
    world.poll()
    events_before = world.events(done)
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    assert after.events(done) == events_before
    assert after.attempts.live == {}


def test_a_daemon_that_died_after_quarantining_decides_the_same_after_restart(world: World) -> None:
    """The move into quarantine/ is a file-system effect outside the transaction: redoing it is harmless."""
    job_id = world.submit(restart={"jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    (checkpoints / "epoch=0-step=50.ckpt").write_bytes(b"good")
    os.utime(checkpoints / "epoch=0-step=50.ckpt", (0, 0))
    (checkpoints / "last.ckpt").write_bytes(b"")
    error = "Traceback (most recent call last):\nEOFError: Ran out of input\n"
    first = world.start(job_id)
    world.job_ended(first, exit_code=1, log=error)
    world.poll()
    world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")
    second = world.start(job_id)
    world.job_ended(second, exit_code=1, log=error)
    world.attempts._quarantine(world.job(job_id), "last.ckpt", world.clock.time())  # ... and the daemon dies here
    after = world.reborn()
    recover(after.store, after.attempts, after.clock.time())
    job = after.job(job_id)
    assert job.state is JobState.QUEUED
    assert [p.name for p in (checkpoints / "quarantine").iterdir()] == ["last.ckpt"]
    after.start(job_id)
    assert after.store.attempts(job_id)[-1].checkpoint_before == "epoch=0-step=50.ckpt"
