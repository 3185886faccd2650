"""`trainsup run job.yaml`: one job supervised in the foreground, without a daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import JOBS, TRAINSUP, wait_for, write_spec
from trainsup.jobs.store import Store

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, *args: str, **fields) -> Path:
    fields = {"checkpoint_dir": "ckpt", "grace_period": "20s", "restart": {"initial": "0.5s", "max": "1s"}, **fields}
    return write_spec(tmp_path / "job.yaml", name="fg", command=[
        sys.executable, str(JOBS / "slurm_job.py"), "--out", str(tmp_path / "out.json"), *args], **fields)


def _run(state_env: dict[str, str], tmp_path: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([TRAINSUP, "run", str(tmp_path / "job.yaml"), "--state", str(tmp_path / "run-state"),
                           "--report", str(tmp_path / "report.json"), *extra], env=state_env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_crash_restarts_in_place_and_the_log_is_on_stdout(state_env: dict[str, str], tmp_path: Path) -> None:
    _spec(tmp_path, "--crash-at", "6")
    result = _run(state_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"step": 24, "attempt": 2}
    out = result.stdout
    assert "event crash at step 6" in out and "event start step 4 attempt 2" in out
    assert "──── trainsup: attempt 2 · " in out and "previous ended: crash" in out
    assert out.rstrip().endswith("──── trainsup: job succeeded: the job exited 0 ────")
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["state"], report["attempt"], report["last_reason"], report["slurm_id"]) == \
        ("succeeded", 2, "succeeded", None)
    # No daemon was involved, and the user's own state dir was never touched.
    assert not Path(state_env["TRAINSUP_HOME"]).exists()
    again = _run(state_env, tmp_path)
    assert again.returncode == 0 and "already succeeded" in again.stdout


def test_sigint_checkpoints_exits_75_and_a_second_run_resumes(state_env: dict[str, str], tmp_path: Path) -> None:
    _spec(tmp_path, "--epochs", "4", "--step-delay", "0.25", "--save-every", "100")
    log = open(tmp_path / "first.out", "w")
    process = subprocess.Popen([TRAINSUP, "run", str(tmp_path / "job.yaml"), "--state", str(tmp_path / "run-state")],
                               env=state_env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "event step 3\n" in (tmp_path / "first.out").read_text(), 90, 0.1, "step 3")
    second = _run(state_env, tmp_path, "--again")
    assert second.returncode == 4 and "another trainsup run or daemon is already running" in second.stderr
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 75
    store = Store.open_readonly(tmp_path / "run-state" / "trainsup.db")
    assert len(store.jobs()) == 1  # the refused second run queued nothing beside it
    store.close()
    first = (tmp_path / "first.out").read_text()
    assert "SIGINT: asking the job to checkpoint and stop" in first
    assert "stopping on SIGTERM after checkpoint" in first  # the trainer saved on the way out (save-every 100)
    assert not (tmp_path / "out.json").exists()
    result = _run(state_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(resumed)" in result.stdout and "attempt 2 resumed from step-" in result.stdout
    assert "event start step 0" not in result.stdout  # the first run's log is not printed again
    assert json.loads((tmp_path / "out.json").read_text()) == {"step": 48, "attempt": 2}


def test_bad_input_is_one_sentence(state_env: dict[str, str], tmp_path: Path) -> None:
    missing = subprocess.run([TRAINSUP, "run", str(tmp_path / "nope.yaml")], env=state_env, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.yaml" in missing.stderr
    sweep = write_spec(tmp_path / "sweep.yaml", name="s", command="echo {x}", sweep={"x": [1, 2]})
    result = subprocess.run([TRAINSUP, "run", str(sweep)], env=state_env, capture_output=True, text=True)
    assert result.returncode == 2 and "trainsup run takes one job" in result.stderr


def test_the_default_state_dir_is_private_and_refuses_one_another_user_planted(
        state_env: dict[str, str], tmp_path: Path, base: Path, bob) -> None:
    from trainsup.commands.run import default_state_dir

    spec = _spec(tmp_path)
    env = {**state_env, "TMPDIR": str(base)}  # a shared, sticky scratch dir like /tmp
    planted = default_state_dir(spec, env).parent
    bob.run(lambda: planted.mkdir(mode=0o777))
    result = subprocess.run([TRAINSUP, "run", str(spec)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"trainsup: {planted} is not a folder of yours; give another with --state.\n"
    assert default_state_dir(spec, {"TMPDIR": "/x", "SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c1"}) == \
        Path(f"/x/trainsup-run-{os.getuid()}/slurm-c1-42")
