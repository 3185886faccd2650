"""How an attempt ends and what the daemon does next: observe → classify → decide → apply.

Unit tests on a real store and real run-dir files, with a fake launcher and clock:
no process is started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import T0, World
from jobs.step_checkpoint import commit as commit_checkpoint
from trainsup.batch import Batch
from trainsup.contracts import EXIT_PREEMPTED, RESUME_FILE, TrainerExit, read_ended, read_launch
from trainsup.durable import write_json_atomic
from trainsup.jobs.states import EndReason, JobState
from trainsup.supervisor.launcher import attempt_environment


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def run_once(world: World, job_id: str, **ended) -> None:
    world.run_once(job_id, **ended)


def last_attempt(world: World, job_id: str):
    return world.store.attempts(job_id)[-1]


def test_start_writes_the_plan_and_every_state_change_has_its_event(world: World) -> None:
    job_id = world.submit("train", batch_size={"global": 64, "micro": 16})
    plan = world.start(job_id)
    assert world.job(job_id).state is JobState.STARTING
    env = attempt_environment(plan)
    assert (env["TRAINSUP_ATTEMPT"], env["TRAINSUP_BATCH_SIZE"], env["TRAINSUP_GRAD_ACCUM"]) == ("1", "16", "4")
    launch = read_launch(plan.run_dir)
    assert launch is not None and launch.command == ["/bin/sh", "-c", "true"]
    assert (launch.env["TRAINSUP_ATTEMPT"], launch.grace_period, launch.stop_signal) == ("1", 30.0, "SIGTERM")
    world.job_started(plan, job_pid=4242)
    world.poll()
    assert world.job(job_id).state is JobState.RUNNING
    assert last_attempt(world, job_id).job_pid == 4242
    assert world.events(job_id) == ["submitted", "attempt_started", "attempt_running"]


def test_a_monitor_without_a_valid_launch_file_records_why_it_started_nothing(tmp_path: Path) -> None:
    (tmp_path / "launch.json").write_text('{"command": ["true"]}')  # the rest is missing
    subprocess.run([sys.executable, "-m", "trainsup.supervisor.monitor", str(tmp_path)], check=True, timeout=30)
    ended = read_ended(tmp_path)
    assert ended is not None and ended.spawn_error == f"no valid launch.json in {tmp_path}"


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


def test_a_launchers_exit_1_after_the_trainer_saved_at_a_stop_resumes_at_once(world: World) -> None:
    """torchrun exits 1 when its workers exit 75; exit.json in the attempt's run dir says why."""
    job_id = world.submit(restart={"initial": "10s", "jitter": 0})
    saved = TrainerExit("preempted", 12, "SIGTERM: checkpoint step-000000012 saved")
    run_once(world, job_id, exit_code=1, trainer_exit=saved)
    first = last_attempt(world, job_id)
    assert world.job(job_id).state is JobState.QUEUED
    assert (first.reason, first.detail) == (EndReason.PREEMPTED, "exit 1: SIGTERM: checkpoint step-000000012 saved")

    # the next attempt has a run dir of its own: the exit.json above says nothing about it
    run_once(world, job_id, exit_code=1)
    second = last_attempt(world, job_id)
    assert second.run_dir != first.run_dir and not Path(second.run_dir, "exit.json").exists()
    assert second.reason is EndReason.CRASH and world.job(job_id).state is JobState.BACKOFF


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


# --- issue 10: stops, resume arguments, progress in any layout, quarantine -------------------


def stop_for_shutdown(world: World, job_id: str) -> None:
    job = world.job(job_id)
    world.store.set_state(job_id, job.state, JobState.STOPPING, world.clock.time(), "daemon_stopping", "test",
                          stop_requested="shutdown")


def test_exit_0_after_our_stop_is_interrupted_and_requeued(world: World) -> None:
    job_id = world.submit()
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    stop_for_shutdown(world, job_id)
    world.job_ended(plan, exit_code=0, stop_requested=True)  # Lightning on SIGTERM
    world.poll()
    assert last_attempt(world, job_id).reason is EndReason.INTERRUPTED
    assert world.job(job_id).state is JobState.QUEUED


def test_exit_0_after_our_stop_is_a_success_when_the_job_says_it_finished(world: World) -> None:
    job_id = world.submit()
    plan = world.start(job_id)
    stop_for_shutdown(world, job_id)
    world.job_ended(plan, exit_code=0, trainer_exit=TrainerExit("finished", 100, "done"))
    world.poll()
    assert world.job(job_id).state is JobState.SUCCEEDED


def test_a_config_error_fails_the_job_with_its_sentence(world: World) -> None:
    job_id = world.submit(restart={"max_restarts": 5})
    sentence = "The checkpoint was saved at epoch 50 and the run has 30 epochs: nothing left to train."
    run_once(world, job_id, exit_code=1, trainer_exit=TrainerExit("config_error", 0, sentence))
    job = world.job(job_id)
    assert (job.state, job.result) == (JobState.FAILED, sentence)
    assert last_attempt(world, job_id).detail == f"exit 1: {sentence}"
    assert len(world.store.attempts(job_id)) == 1


GUIDE_RESUME = {"args": ["--resume", "{checkpoint}"], "checkpoint": "last_model.pth"}


def test_resume_arguments_are_added_only_when_a_checkpoint_exists(world: World) -> None:
    job_id = world.submit("guide", command=["python", "train.py"], resume=GUIDE_RESUME)
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    first = world.start(job_id)
    assert first.command == ["python", "train.py"]
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / "last_model.pth").write_bytes(b"weights")
    world.job_ended(first, signal=int(signal.SIGKILL))
    world.poll()
    world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")
    second = world.start(job_id)
    assert second.command == ["python", "train.py", "--resume", str(checkpoints / "last_model.pth")]
    started = [e for e in world.store.events(job_id) if e.kind == "attempt_started"][-1]
    assert "will find last_model.pth, written" in started.message and "passing --resume" in started.message


def test_a_rewritten_file_is_progress_whatever_its_name(world: World) -> None:
    """Lightning overwrites last.ckpt: same name, new contents, progress."""
    job_id = world.submit(restart={"crash_loop": 2, "max_restarts": 10, "jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    for round_ in range(4):
        plan = world.start(job_id)
        world.clock.advance(10)
        (checkpoints / "last.ckpt").write_bytes(b"x" * round_)
        os.utime(checkpoints / "last.ckpt", (world.clock.time(), world.clock.time()))
        world.job_ended(plan, signal=int(signal.SIGKILL))
        world.poll()
        assert world.job(job_id).state is JobState.BACKOFF, world.job(job_id).result
        world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")
    assert all("1.0s" in e.message for e in world.store.events(job_id) if e.kind == "decision"), "backoff reset"


def die_loading(world: World, job_id: str, error: str) -> None:
    plan = world.start(job_id)
    world.job_ended(plan, exit_code=1, log=f"Traceback (most recent call last):\n{error}\n")
    world.poll()
    job = world.job(job_id)
    if job.state is JobState.BACKOFF:
        world.store.set_state(job_id, JobState.BACKOFF, JobState.QUEUED, world.clock.time(), "backoff_over", "test")


def test_an_unloadable_checkpoint_is_quarantined_and_the_previous_one_used(world: World) -> None:
    job_id = world.submit(restart={"jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    (checkpoints / "epoch=0-step=50.ckpt").write_bytes(b"good")
    os.utime(checkpoints / "epoch=0-step=50.ckpt", (T0 - 100, T0 - 100))
    (checkpoints / "last.ckpt").write_bytes(b"")
    os.utime(checkpoints / "last.ckpt", (T0 - 10, T0 - 10))
    for _ in range(2):
        die_loading(world, job_id, "RuntimeError: PytorchStreamReader failed reading zip archive")
    assert world.job(job_id).state is JobState.QUEUED  # at once
    assert (checkpoints / "quarantine" / "last.ckpt").exists() and not (checkpoints / "last.ckpt").exists()
    assert "quarantined" in world.events(job_id)
    world.start(job_id)
    assert last_attempt(world, job_id).checkpoint_before == "epoch=0-step=50.ckpt"


def test_with_nothing_older_the_job_fails_naming_the_file(world: World) -> None:
    job_id = world.submit("guide", resume=GUIDE_RESUME, restart={"max_restarts": 5, "jitter": 0, "initial": "1s"})
    checkpoints = Path(world.job(job_id).checkpoint_dir)
    checkpoints.mkdir(parents=True)
    (checkpoints / "last_model.pth").write_bytes(b"")  # killed inside torch.save
    for _ in range(2):
        die_loading(world, job_id, "EOFError: Ran out of input")
    job = world.job(job_id)
    assert job.state is JobState.FAILED
    assert job.result.startswith("last_model.pth cannot be loaded (EOFError: Ran out of input) and there is no older")
    assert (checkpoints / "quarantine" / "last_model.pth").exists()
    assert len(world.store.attempts(job_id)) == 2


def test_the_timeline_says_what_the_trainer_really_loaded(world: World) -> None:
    job_id = world.submit()
    plan = world.start(job_id)
    world.job_started(plan)
    write_json_atomic(plan.run_dir / RESUME_FILE, {
        "select": "latest", "checkpoint": "step-000000100", "step": 100, "attempt": 1,
        "skipped": [{"checkpoint": "step-000000200", "why": "state.pt does not match its sha256"}]})
    world.poll()
    resumed = [e.message for e in world.store.events(job_id) if e.kind == "resumed"]
    assert resumed == ["attempt 1 resumed from step-000000100 "
                       "(skipped step-000000200: state.pt does not match its sha256)"]
