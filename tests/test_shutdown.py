"""Graceful shutdown: SIGTERM to the daemon checkpoints every job and requeues it.

Real daemon, real monitors, real signals; a real trainsup.trainer run for exactness.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable


def _logs(cli: Cli, job: str) -> str:
    return cli.run("logs", job).stdout


def _plain_env() -> dict[str, str]:
    """An environment with no trace of a supervisor: the trainer runs on its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_sigterm_checkpoints_requeues_and_resumes_exactly(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    script = JOBS / "trainer_job.py"
    # The same run, uninterrupted and outside the daemon, in parallel with the supervised one.
    reference_out = tmp_path / "reference.pt"
    with open(tmp_path / "reference.log", "wb") as log:
        reference = subprocess.Popen(
            [PY, str(script), "--out", str(reference_out), "--checkpoint-dir", str(tmp_path / "reference-ckpt")],
            env=_plain_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _interrupt_and_resume(cli, daemon, tmp_path, script, reference, reference_out)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()


def _interrupt_and_resume(cli: Cli, daemon: DaemonProcess, tmp_path: Path, script: Path,
                          reference: subprocess.Popen, reference_out: Path) -> None:
    import torch

    supervised_out = tmp_path / "supervised.pt"
    spec = write_spec(
        tmp_path / "train.yaml", name="train",
        command=[PY, str(script), "--out", str(supervised_out), "--step-delay", "0.15"],
        checkpoint_dir="ckpt", grace_period="60s", restart={"max_restarts": 0},
    )
    daemon.start()
    job = cli.submit(spec)
    wait_for(lambda: "event step 6\n" in _logs(cli, job), 90, 0.2, "the job to reach step 6")

    assert daemon.stop(timeout=90) == 0, "the daemon exits 0 after its jobs checkpointed"

    stopped = cli.job(job)
    assert stopped["state"] == "queued", "back in the queue, not failed"
    [first] = stopped["attempts"]
    assert first["exit_code"] == 75 and first["signal"] is None, first
    assert first["reason"] == "interrupted", first
    assert first["checkpoint_after"] is not None, "it checkpointed on SIGTERM"
    saved_step = int(first["checkpoint_after"].split("-")[1])
    assert 6 <= saved_step < 36, "stopped mid-run, at a step boundary after SIGTERM"
    log = _logs(cli, job)
    assert "SIGTERM received" in log and "exit code 75" in log
    assert not supervised_out.exists()

    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed", timeout=120)
    assert final["state"] == "succeeded", _logs(cli, job)
    assert [a["reason"] for a in final["attempts"]] == [first["reason"], "succeeded"]
    assert f"event start step {saved_step}" in _logs(cli, job), "attempt 2 resumed from the SIGTERM checkpoint"

    assert reference.wait(timeout=120) == 0, (tmp_path / "reference.log").read_text()
    resumed = torch.load(supervised_out, weights_only=True)
    uninterrupted = torch.load(reference_out, weights_only=True)
    assert resumed["step"] == uninterrupted["step"] == 36
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), f"{name} differs after an interrupted run"


def test_job_ignoring_sigterm_is_killed_after_grace_and_requeued(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = write_spec(
        tmp_path / "stubborn.yaml", name="stubborn",
        command=[PY, str(JOBS / "resumable.py"), "--steps", "1000", "--interval", "0.05", "--on-term", "ignore"],
        grace_period="1s", restart={"max_restarts": 0},
    )
    daemon.start()
    job = cli.submit(spec)
    wait_for(lambda: "step 3\n" in _logs(cli, job), 60, 0.2, "the job to run")
    assert daemon.stop(timeout=60) == 0

    stopped = cli.job(job)
    assert stopped["state"] == "queued", stopped
    [first] = stopped["attempts"]
    assert first["signal"] == 9 and first["reason"] == "interrupted", first
    events = [e["kind"] for e in cli.json("show", job)["events"]]
    assert "daemon_stopping" in events

    daemon.start()
    started_again = wait_for(lambda: len((s := cli.job(job))["attempts"]) == 2 and s, 60, 0.2, "attempt 2")
    assert started_again["state"] in ("starting", "running")
    resumed_at = wait_for(lambda: "attempt 2 starting at step" in (log := _logs(cli, job)) and log, 60, 0.2, "attempt 2 log")
    assert int(resumed_at.split("attempt 2 starting at step ")[1].split()[0]) >= 3, "resumed from its checkpoints"


def test_exit_75_on_shutdown_is_recorded_interrupted(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = write_spec(
        tmp_path / "polite.yaml", name="polite",
        command=[PY, str(JOBS / "resumable.py"), "--steps", "1000", "--interval", "0.05"],
        grace_period="30s",
    )
    daemon.start()
    job = cli.submit(spec)
    wait_for(lambda: "step 2\n" in _logs(cli, job), 60, 0.2, "the job to run")
    assert daemon.stop(timeout=60) == 0
    [first] = cli.job(job)["attempts"]
    assert first["exit_code"] == 75
    assert first["reason"] == "interrupted"


SLOW_MONITOR_START = """
import sys, time
if "trainsup.supervisor.monitor" in sys.orig_argv:
    time.sleep(3.0)  # a monitor still starting: no signal handlers yet
"""


def test_shutdown_while_a_monitor_starts_is_not_a_failure(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    """systemd stops the daemon right after it started a job (boot, then shutdown at once)."""
    site = tmp_path / "slow-monitor"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_MONITOR_START)
    spec = write_spec(tmp_path / "early.yaml", name="early", command="echo ran", restart={"max_restarts": 0})
    job = cli.submit(spec)
    plain = daemon.env
    daemon.env = {**state_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), state_env.get("PYTHONPATH")]))}
    daemon.start()  # it starts the job's monitor before it reports ready
    assert daemon.stop(timeout=60) == 0

    stopped = cli.job(job)
    assert stopped["state"] == "queued", (stopped["state"], stopped["result"], stopped["attempts"])
    assert [a["reason"] for a in stopped["attempts"]] == ["interrupted"]
    daemon.env = plain
    daemon.start()
    assert cli.wait_state(job, "succeeded", "failed")["state"] == "succeeded"


def test_shutdown_while_waiting_for_the_checkpoint_lock_is_not_a_failure(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    """Another run (a standalone trainer run, say) holds the checkpoint dir when systemd stops us."""
    import fcntl

    checkpoints = tmp_path / "shared-ckpt"
    checkpoints.mkdir()
    holder = os.open(checkpoints / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        spec = write_spec(tmp_path / "waits.yaml", name="waits", command="echo ran",
                          checkpoint_dir=str(checkpoints), restart={"max_restarts": 0})
        daemon.start()
        job = cli.submit(spec)
        wait_for(lambda: list((tmp_path / "state" / "jobs").glob("*/attempt-1.run/monitor.log")), 30, 0.1, "a monitor")
        time.sleep(1.0)  # it is waiting for the lock
        assert cli.job(job)["state"] == "starting"
        assert daemon.stop(timeout=60) == 0
        stopped = cli.job(job)
        assert stopped["state"] == "queued", (stopped["state"], stopped["result"], stopped["attempts"])
    finally:
        os.close(holder)
    daemon.start()
    assert cli.wait_state(job, "succeeded", "failed")["state"] == "succeeded"
