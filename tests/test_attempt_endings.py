"""How an attempt ends and what the daemon does next: observe → classify → decide → apply.

Unit tests on a real store and real run-dir files, with a fake launcher and clock:
no process is started.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fakes import World
from jobs.step_checkpoint import commit as commit_checkpoint
from trainsup.batch import Batch
from trainsup.contracts import EXIT_PREEMPTED, TrainerExit
from trainsup.jobs.states import EndReason, JobState
from trainsup.supervisor.launcher import attempt_environment


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def run_once(world: World, job_id: str, **ended) -> None:
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.clock.advance(ended.pop("uptime", 5.0))
    world.job_ended(plan, **ended)
    world.poll()


def last_attempt(world: World, job_id: str):
    return world.store.attempts(job_id)[-1]


def test_start_writes_the_plan_and_every_state_change_has_its_event(world: World) -> None:
    job_id = world.submit("train", batch_size={"global": 64, "micro": 16})
    plan = world.start(job_id)
    assert world.job(job_id).state is JobState.STARTING
    env = attempt_environment(plan)
    assert (env["TRAINSUP_ATTEMPT"], env["TRAINSUP_BATCH_SIZE"], env["TRAINSUP_GRAD_ACCUM"]) == ("1", "16", "4")
    assert (plan.run_dir / "launch.json").exists()
    world.job_started(plan, job_pid=4242)
    world.poll()
    assert world.job(job_id).state is JobState.RUNNING
    assert last_attempt(world, job_id).job_pid == 4242
    assert world.events(job_id) == ["submitted", "attempt_started", "attempt_running"]


def test_exit_0_succeeds(world: World) -> None:
    job_id = world.submit()
    run_once(world, job_id, exit_code=0)
    job, attempt = world.job(job_id), last_attempt(world, job_id)
    assert job.state is JobState.SUCCEEDED and job.result == "the job exited 0"
    assert (attempt.reason, attempt.detail, attempt.exit_code) == (EndReason.SUCCEEDED, "exit 0", 0)
    assert world.events(job_id)[-2:] == ["attempt_ended", "decision"]


def test_a_crash_backs_off_with_the_clock(world: World) -> None:
    job_id = world.submit(restart={"initial": "10s", "max": "1m", "jitter": 0})
    run_once(world, job_id, exit_code=1)
    job = world.job(job_id)
    assert job.state is JobState.BACKOFF
    assert job.next_start_at == pytest.approx(world.clock.time() + 10.0)
    assert last_attempt(world, job_id).reason is EndReason.CRASH


def test_exit_75_resumes_at_once(world: World) -> None:
    job_id = world.submit()
    run_once(world, job_id, exit_code=EXIT_PREEMPTED)
    assert world.job(job_id).state is JobState.QUEUED
    assert last_attempt(world, job_id).reason is EndReason.PREEMPTED


def test_cuda_oom_restarts_at_once_with_a_smaller_micro_batch(world: World) -> None:
    job_id = world.submit("big", batch_size={"global": 256, "micro": 64, "min_micro": 16})
    run_once(world, job_id, exit_code=1, log="torch.OutOfMemoryError: CUDA out of memory\n")
    job = world.job(job_id)
    assert job.state is JobState.QUEUED
    assert job.batch == Batch(32, 8)
    assert last_attempt(world, job_id).batch == Batch(64, 4)  # what the dead attempt ran with
    assert "batch_backoff" in world.events(job_id)
    plan = world.start(job_id)
    assert attempt_environment(plan)["TRAINSUP_BATCH_SIZE"] == "32"
    assert world.store.remembered_micro("big", 256) == 32


def test_cuda_oom_from_the_trainers_exit_file(world: World) -> None:
    job_id = world.submit(batch_size={"global": 8, "micro": 8})
    run_once(world, job_id, exit_code=1, trainer_exit=TrainerExit("oom", 3, "CUDA out of memory"))
    assert world.job(job_id).batch == Batch(4, 2)


def test_cuda_oom_below_min_micro_fails_and_keeps_the_batch(world: World) -> None:
    job_id = world.submit(batch_size={"global": 64, "micro": 16, "min_micro": 16})
    run_once(world, job_id, exit_code=1, log="CUDA out of memory")
    job = world.job(job_id)
    assert job.state is JobState.FAILED
    assert "no smaller micro-batch" in job.result
    assert job.batch == Batch(16, 4)
    assert "batch_backoff" not in world.events(job_id)


def test_success_remembers_the_batch_that_worked(world: World) -> None:
    first = world.submit("sweep", batch_size={"global": 64, "micro": 64})
    run_once(world, first, exit_code=1, log="CUDA out of memory")
    run_once(world, first, exit_code=0)
    second = world.submit("sweep", batch_size={"global": 64, "micro": 64})
    plan = world.start(second)
    assert attempt_environment(plan)["TRAINSUP_BATCH_SIZE"] == "32"


def test_a_hang_verdict_is_read_from_the_store(world: World) -> None:
    job_id = world.submit()
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.store.update_attempt(job_id, 1, hang_verdict="no heartbeat for 700 s during train")
    world.job_ended(plan, signal=int(signal.SIGKILL))
    world.poll()
    assert last_attempt(world, job_id).reason is EndReason.HANG


def test_a_monitor_that_vanishes_after_starting_the_job_loses_the_attempt(world: World) -> None:
    job_id = world.submit(restart={"jitter": 0})
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.launcher.alive[world.monitor_pid(plan)] = False  # no ended.json
    world.poll()
    attempt = last_attempt(world, job_id)
    assert (attempt.reason, attempt.detail) == (EndReason.LOST, "its monitor vanished without recording an exit")
    assert world.job(job_id).state is JobState.BACKOFF


def test_a_monitor_that_writes_its_record_as_it_exits_is_read(world: World) -> None:
    """The monitor is already gone when the daemon looks, but its ended.json is there."""
    job_id = world.submit()
    plan = world.start(job_id)
    world.job_ended(plan, exit_code=0)
    world.poll()
    assert world.job(job_id).state is JobState.SUCCEEDED


def test_the_monitor_cannot_be_started(world: World) -> None:
    job_id = world.submit()
    world.launcher.fail_with = OSError(24, "Too many open files")
    world.attempts.start(world.job(job_id), [], world.clock.time())
    job, attempt = world.job(job_id), last_attempt(world, job_id)
    assert job.state is JobState.FAILED
    assert attempt.reason is EndReason.SPAWN_FAILED and "Too many open files" in attempt.detail
    assert world.job(job_id).id not in world.attempts.live


def test_the_command_cannot_be_started(world: World) -> None:
    job_id = world.submit()
    plan = world.start(job_id)
    world.job_ended(plan, spawn_error="cannot start 'trian.py': No such file or directory")
    world.poll()
    assert last_attempt(world, job_id).detail == "cannot start 'trian.py': No such file or directory"
    assert world.job(job_id).state is JobState.FAILED


def test_cancel_of_a_running_attempt_asks_the_monitor_then_ends_cancelled(world: World) -> None:
    from trainsup.jobs.requests import Control

    job_id = world.submit()
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.control(job_id, Control.CANCEL)
    assert world.job(job_id).state is JobState.STOPPING
    assert world.launcher.stopped == [world.monitor_pid(plan)]
    world.job_ended(plan, exit_code=EXIT_PREEMPTED, stop_requested=True)  # it checkpointed on our SIGTERM
    world.poll()
    job = world.job(job_id)
    assert (job.state, job.stop_requested) == (JobState.CANCELLED, None)
    assert last_attempt(world, job_id).reason is EndReason.CANCELLED


def test_a_progressing_job_is_not_a_crash_loop(world: World) -> None:
    job_id = world.submit(restart={"crash_loop": 2, "max_restarts": 10, "jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    for step in (10, 20, 30):
        plan = world.start(job_id)
        world.job_started(plan)
        world.poll()
        checkpoints.mkdir(exist_ok=True)
        commit_checkpoint(checkpoints, step)
        world.job_ended(plan, signal=int(signal.SIGKILL))
        world.poll()
        assert world.job(job_id).state is JobState.BACKOFF
        world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")
    assert [a.checkpoint_after for a in world.store.attempts(job_id)] == [
        "step-000000010", "step-000000020", "step-000000030"]


def test_a_job_without_progress_is_a_crash_loop(world: World) -> None:
    job_id = world.submit(restart={"crash_loop": 2, "max_restarts": 10, "jitter": 0, "initial": "1s"})
    for _ in range(2):
        run_once(world, job_id, exit_code=1, uptime=1.0)
        if world.job(job_id).state is JobState.BACKOFF:
            world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")
    job = world.job(job_id)
    assert job.state is JobState.FAILED and job.result.startswith("crash loop")


def test_a_checkpoint_with_a_truncated_file_is_not_progress(world: World) -> None:
    """The daemon names the newest checkpoint whose manifest and file sizes agree."""
    job_id = world.submit(restart={"jitter": 0})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    commit_checkpoint(checkpoints, 10)
    plan = world.start(job_id)
    assert last_attempt(world, job_id).checkpoint_before == "step-000000010"
    commit_checkpoint(checkpoints, 20)
    (checkpoints / "step-000000020" / "state").write_text("")  # cut short by a power loss
    world.job_ended(plan, exit_code=1)
    world.poll()
    assert last_attempt(world, job_id).checkpoint_after == "step-000000010"
