"""Stops of a trainsup.trainer job with DataLoader workers always end in a checkpoint.

Real daemon, real monitors, real signals. The stop signal goes to the job's main process
only, so its DataLoader workers live on until the trainer has checkpointed and shuts them
down itself. (SIGTERM to the whole process group kills the workers at once, and the
trainer dies of `RuntimeError: DataLoader worker (pid(s) …) exited unexpectedly` before it
reaches a step boundary.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec
from trainsup.contracts import parse_step_dir, read_heartbeats, read_json, step_dir_name

PY = sys.executable
# Each stop lands at a random moment of a DataLoader-worker cycle (issue 10: 10 of 10 of
# each). For CI time five jobs run at once: they share each daemon stop, and a cancelled
# job's place goes to the next of the ten to be cancelled.
AT_ONCE = 5
DAEMON_STOPS = 2  # × AT_ONCE jobs: 10 stops
CANCELS = 10  # AT_ONCE at a time
# Epochs of 8 to 24 steps: each job starts a new pair of workers at its own pace, so one
# daemon stop lands early in one job's epoch and late in another's.
STOP_SAMPLES = (64, 96, 128, 160, 192)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # five jobs on two cores: no torch thread pools spinning against each other
WORKER_DEATH = ("DataLoader worker", "killed by signal", "exited unexpectedly")


def _command(out: Path, samples: int) -> list[str]:
    return [PY, str(JOBS / "trainer_job.py"), "--out", str(out), "--epochs", "1000", "--num-workers", "2",
            "--samples", str(samples), "--step-delay", "0.03", "--save-every", "100000"]


def _run_dir(tmp_path: Path, job: str, attempt: int) -> Path:
    return tmp_path / "state" / "jobs" / job / f"attempt-{attempt}.run"


def _log(tmp_path: Path, job: str, attempt: int) -> str:
    path = tmp_path / "state" / "jobs" / job / f"attempt-{attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _training_step(tmp_path: Path, job: str, attempt: int, beyond: int) -> int | None:
    """The step of the attempt's heartbeat once it trained 2 steps past `beyond` (its handlers are in place)."""
    beats = read_heartbeats(_run_dir(tmp_path, job, attempt) / "heartbeat")
    if beats and beats[0].phase == "train" and beats[0].step >= beyond + 2:
        return beats[0].step
    return None


def _check_stopped_attempt(tmp_path: Path, job: str, attempt: dict, step_at_stop: int, reason: str) -> int:
    number = attempt["number"]
    log = _log(tmp_path, job, number)
    where = f"{job} attempt {number}: {attempt}\n{log[-3000:]}"
    assert attempt["exit_code"] == 75 and attempt["signal"] is None, where
    assert attempt["reason"] == reason, where
    assert not any(text in log for text in WORKER_DEATH), where
    assert log.count("SIGTERM received") == 1, f"the main process alone got the stop signal: {where}"
    exit_info = read_json(_run_dir(tmp_path, job, number) / "exit.json")
    assert exit_info and exit_info["reason"] == "preempted", where
    saved = attempt["checkpoint_after"]
    assert saved is not None and saved != attempt["checkpoint_before"], where
    saved_step = parse_step_dir(saved)
    assert saved_step is not None and saved_step >= step_at_stop, f"checkpoint {saved} is older than the stop: {where}"
    assert exit_info["step"] == saved_step, where
    return saved_step


@pytest.mark.slow
def test_daemon_stops_each_checkpoint_with_dataloader_workers(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    cli.run("group", "set", "default", str(AT_ONCE))  # all five at once, beyond the default limit
    daemon.start()
    jobs = {}
    for index, samples in enumerate(STOP_SAMPLES[:AT_ONCE]):
        name = f"stops-{index}"
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, command=_command(tmp_path / f"{name}.pt", samples),
                          checkpoint_dir=str(tmp_path / f"ckpt-{name}"), grace_period="60s",
                          restart={"max_restarts": 0}, env=ONE_THREAD)
        jobs[cli.submit(spec)] = samples
    saved = dict.fromkeys(jobs, 0)
    places = []
    started = time.monotonic()
    for number in range(1, DAEMON_STOPS + 1):
        if number > 1:
            daemon.start()
        # a lower bound of each job's step at the stop (a second read can land outside the train phase)
        steps_at_stop = {job: wait_for(lambda: _training_step(tmp_path, job, number, saved[job]), 90, 0.05,
                                       f"{job} attempt {number} to train") for job in jobs}
        for job in jobs:
            assert f"event start step {saved[job]}" in _log(tmp_path, job, number), "resumed from the last stop's checkpoint"
        assert daemon.stop(timeout=90) == 0, "the daemon exits 0 once its jobs checkpointed"
        for job, samples in jobs.items():
            status = cli.job(job)
            assert status["state"] == "queued", status
            assert len(status["attempts"]) == number, status["attempts"]
            new_step = _check_stopped_attempt(tmp_path, job, status["attempts"][-1], steps_at_stop[job], "interrupted")
            assert new_step > saved[job]
            assert (tmp_path / f"ckpt-{status['name']}" / step_dir_name(new_step) / "manifest.json").is_file()
            saved[job] = new_step
            places.append(f"{new_step} ({new_step % (samples // 8)} of {samples // 8})")
    daemon.start()
    for job in jobs:
        wait_for(lambda: f"event start step {saved[job]}" in _log(tmp_path, job, DAEMON_STOPS + 1), 90, 0.1,
                 f"{job} to resume from the last stop's checkpoint")
    daemon.kill9()  # the fixture kills the jobs: a third stop would only add time
    print(f"{DAEMON_STOPS * len(jobs)} daemon stops in {time.monotonic() - started:.1f} s, "
          f"saved at steps {', '.join(places)}")


@pytest.mark.slow
def test_cancels_each_checkpoint_with_dataloader_workers(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    cli.run("group", "set", "default", str(AT_ONCE))  # five at once, beyond the default limit
    daemon.start()
    started = time.monotonic()
    jobs = []
    for index in range(CANCELS):
        name = f"cancel-{index}"
        # 60 steps an epoch: fewer worker restarts while five jobs share two cores
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, command=_command(tmp_path / f"{name}.pt", 480),
                          checkpoint_dir=str(tmp_path / f"ckpt-{name}"), grace_period="60s",
                          restart={"max_restarts": 0}, env=ONE_THREAD)
        jobs.append(cli.submit(spec))
    # Each job is cancelled as soon as it trains, and a queued one takes its place: five
    # run at a time, and each cancel lands while others start, train or save.
    steps_at_stop: dict[str, int] = {}  # a lower bound of each job's step at its cancel

    def cancel_those_training() -> bool:
        for job in jobs:
            if job not in steps_at_stop and (step := _training_step(tmp_path, job, 1, 0)) is not None:
                steps_at_stop[job] = step
                cli.run("cancel", job)
        return len(steps_at_stop) == len(jobs)

    wait_for(cancel_those_training, 180, 0.05, "every job to train and be cancelled")
    for job in jobs:
        final = cli.wait_state(job, "cancelled", "failed", "succeeded", timeout=60)
        assert final["state"] == "cancelled", final
        [attempt] = final["attempts"]
        _check_stopped_attempt(tmp_path, job, attempt, steps_at_stop[job], "cancelled")
    print(f"{CANCELS} cancels in {time.monotonic() - started:.1f} s")
