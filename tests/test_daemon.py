"""The daemon end to end: real processes, real signals, real SQLite."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable


def counter_spec(tmp_path: Path, name: str = "counter", steps: int = 20, interval: float = 0.1, **extra) -> Path:
    return write_spec(
        tmp_path / f"{name}.yaml",
        name=name,
        command=[PY, str(JOBS / "counter.py"), "--steps", str(steps), "--interval", str(interval)],
        restart={"initial": "0.1s", "max": "1s"},
        **extra,
    )


def running_pid(cli: Cli, job: str) -> int:
    return wait_for(lambda: cli.job(job).get("pid"), 30, 0.1, "a running pid")


def test_submit_while_daemon_down_then_start(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = counter_spec(tmp_path, steps=3, interval=0.01)
    result = cli.run("submit", str(spec))
    assert "daemon is not running" in result.stderr
    job = result.stdout.split()[-1]
    assert cli.job(job)["state"] == "queued"
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded"
    assert "finished" in cli.run("logs", job).stdout


def test_sigkilled_job_is_restarted_and_resumes(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    job = cli.submit(counter_spec(tmp_path, steps=30, interval=0.1))
    pid = running_pid(cli, job)
    wait_for(lambda: "step 5" in cli.run("logs", job).stdout, 30, 0.1, "step 5")
    os.kill(pid, signal.SIGKILL)
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded"
    attempts = final["attempts"]
    assert [a["reason"] for a in attempts] == ["crash", "succeeded"]
    assert attempts[0]["signal"] == signal.SIGKILL
    logs = cli.run("logs", job).stdout
    resumed_at = int(logs.split("attempt 2 starting at step ")[1].split()[0])
    assert resumed_at >= 5, "the second attempt resumed from the checkpoint"


def test_max_restarts_exhausted_fails(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "crash.yaml", name="crash", command="echo boom; exit 7",
                      restart={"max_restarts": 2, "initial": "0.05s", "crash_loop": 0})
    job = cli.submit(spec)
    final = cli.wait_state(job, "failed", "succeeded")
    assert final["state"] == "failed"
    assert len(final["attempts"]) == 3
    assert all(a["exit_code"] == 7 and a["reason"] == "crash" for a in final["attempts"])
    assert "gave up after 2 restarts" in final["result"]


def test_crash_loop_is_detected(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "loop.yaml", name="loop", command="exit 1",
                      restart={"max_restarts": 50, "initial": "0.05s", "crash_loop": 3, "min_uptime": "10s"})
    job = cli.submit(spec)
    final = cli.wait_state(job, "failed")
    assert len(final["attempts"]) == 3
    assert "crash loop" in final["result"]


def test_exit_75_resumes_at_once_without_counting(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "pre.yaml", name="pre",
                      command=[PY, str(JOBS / "counter.py"), "--steps", "4", "--interval", "0.01", "--exit-code-at", "2"],
                      restart={"max_restarts": 0})
    job = cli.submit(spec)
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded"
    assert [a["reason"] for a in final["attempts"]] == ["preempted", "succeeded"]


def test_cancel_kills_whole_process_tree(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    pids_file = tmp_path / "pids"
    spec = write_spec(tmp_path / "tree.yaml", name="tree", command=[PY, str(JOBS / "tree.py"), str(pids_file)],
                      grace_period="1s")
    job = cli.submit(spec)
    wait_for(pids_file.exists, 30, what="the tree to start")
    pids = [int(p) for p in pids_file.read_text().split()]
    assert all(psutil.pid_exists(p) for p in pids)
    cli.run("cancel", job)
    final = cli.wait_state(job, "cancelled", "failed", "succeeded")
    assert final["state"] == "cancelled"
    wait_for(lambda: not any(_alive(p) for p in pids), 10, what="every process of the tree to die")
    time.sleep(1.5)
    assert cli.job(job)["state"] == "cancelled", "a cancelled job is never restarted"
    assert len(cli.job(job)["attempts"]) == 1


def test_logs_of_three_attempts_in_order(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "three.yaml", name="three",
                      command='echo "attempt $TRAINSUP_ATTEMPT out"; echo "attempt $TRAINSUP_ATTEMPT err" >&2; [ "$TRAINSUP_ATTEMPT" = 3 ]',
                      restart={"initial": "0.05s", "crash_loop": 0})
    job = cli.submit(spec)
    cli.wait_state(job, "succeeded")
    lines = cli.run("logs", job).stdout.splitlines()
    assert [l for l in lines if l.startswith("attempt")] == [
        "attempt 1 out", "attempt 1 err", "attempt 2 out", "attempt 2 err", "attempt 3 out", "attempt 3 err",
    ]
    separators = [l for l in lines if l.startswith("────")]
    assert len(separators) == 4 and "previous ended: crash (exit 1)" in separators[2]
    assert separators[3] == "──── trainsup: job succeeded: the job exited 0 ────"
    only_second = cli.run("logs", job, "--attempt", "2").stdout
    assert "attempt 2 out" in only_second and "attempt 1 out" not in only_second
    assert cli.run("logs", job, "--tail", "3").stdout.splitlines() == ["attempt 3 out", "attempt 3 err", separators[3]]


def test_follow_streams_across_restarts_and_exits_with_outcome(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "f.yaml", name="f", command='echo "hi $TRAINSUP_ATTEMPT"; [ "$TRAINSUP_ATTEMPT" = 2 ]',
                      restart={"initial": "0.05s"})
    result = cli.run("submit", str(spec), "--follow", check=False)
    assert result.returncode == 0, result.stderr
    assert "hi 1" in result.stdout and "hi 2" in result.stdout
    assert result.stdout.index("hi 1") < result.stdout.index("attempt 2") < result.stdout.index("hi 2")
    failing = write_spec(tmp_path / "g.yaml", name="g", command="exit 3", restart={"max_restarts": 0})
    assert cli.run("submit", str(failing), "--follow", check=False).returncode == 1


def test_daemon_kill9_job_keeps_running_and_is_readopted(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    marker = tmp_path / "release"
    spec = write_spec(tmp_path / "adopt.yaml", name="adopt",
                      command=f'echo started; while [ ! -e {marker} ]; do sleep 0.05; done; echo done; exit 42',
                      restart={"max_restarts": 0})
    job = cli.submit(spec)
    pid = running_pid(cli, job)
    daemon.kill9()
    time.sleep(0.5)
    assert _alive(pid), "the job outlives the daemon"
    daemon.start()
    assert cli.job(job)["state"] == "running"
    marker.touch()
    final = cli.wait_state(job, "failed", "succeeded")
    assert len(final["attempts"]) == 1, "re-adopted, never started twice"
    assert final["attempts"][0]["exit_code"] == 42, "the real exit status is recorded"
    events = [e["kind"] for e in cli.json("show", job)["events"]]
    assert "adopted" in events


def test_job_that_ended_while_daemon_was_down_is_recorded(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    marker = tmp_path / "release"
    spec = write_spec(tmp_path / "j.yaml", name="j", command=f"while [ ! -e {marker} ]; do sleep 0.05; done")
    job = cli.submit(spec)
    running_pid(cli, job)
    daemon.kill9()
    marker.touch()
    time.sleep(1)
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded"


def test_second_daemon_refuses_to_start(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    daemon.start()
    second = cli.run("daemon", check=False, timeout=30)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr


def test_attempt_environment(cli: Cli, daemon: DaemonProcess, tmp_path: Path, state_env):
    daemon.start()
    spec = write_spec(tmp_path / "env.yaml", name="envjob", command="env | sort", env={"FROM_SPEC": "yes"},
                      checkpoint_dir="ckpt")
    cli.env = {**state_env, "FROM_SHELL": "shell-value", "NOTIFY_SOCKET": "/run/should-not-leak"}
    job = cli.submit(spec)
    cli.wait_state(job, "succeeded")
    env = dict(line.split("=", 1) for line in cli.run("logs", job).stdout.splitlines() if "=" in line)
    assert env["FROM_SHELL"] == "shell-value" and env["FROM_SPEC"] == "yes"
    assert "NOTIFY_SOCKET" not in env
    assert env["TRAINSUP_JOB_ID"] == job and env["TRAINSUP_JOB_NAME"] == "envjob"
    assert env["TRAINSUP_ATTEMPT"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["TRAINSUP_CHECKPOINT_DIR"] == str(tmp_path / "ckpt")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert Path(env["TRAINSUP_RUN_DIR"]).is_dir()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_resubmitting_a_sweep_reruns_only_what_did_not_succeed(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    specs = [write_spec(tmp_path / f"sweep-{i}.yaml", name=f"sweep-{i}", restart={"max_restarts": 0},
                        command=f'[ "{i}" != 1 ] || [ -e {tmp_path}/fixed ]') for i in range(3)]
    first = [cli.submit(spec) for spec in specs]
    states = [cli.wait_state(job, "succeeded", "failed")["state"] for job in first]
    assert states == ["succeeded", "failed", "succeeded"], "one failing job does not block the others"
    (tmp_path / "fixed").touch()
    second = [cli.json("submit", str(spec)) for spec in specs]
    assert [s.get("skipped", False) for s in second] == [True, False, True]
    assert cli.wait_state(second[1]["id"], "succeeded", "failed")["state"] == "succeeded"
    assert len(cli.json("status")) == 4
