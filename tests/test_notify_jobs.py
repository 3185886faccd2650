"""Being told: a real daemon runs the job's (or the user's) notifier on success, failure
and restart with TRAINSUP_NOTIFY_* in its environment; a slow or failing notifier is
logged and never blocks supervision."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from support import Cli, DaemonProcess, wait_for, write_spec
from trainsup.jobs.spec import parse_spec
from trainsup.errors import SpecError
from trainsup.supervisor.notifier import run_one

# Each notification leaves one file named after the job and the event, holding our variables.
RECORD = 'env | grep "^TRAINSUP_NOTIFY_" | sort > "$OUT/$TRAINSUP_NOTIFY_JOB_NAME.$TRAINSUP_NOTIFY_EVENT"'
FAST_RESTART = {"max_restarts": 1, "initial": 0.1, "max": 0.2, "jitter": 0.0}


def _variables(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_notify_spec_forms():
    spec = parse_spec("name: a\ncommand: x\nnotify:\n  command: echo hi\n  on: [restart]\n", "job.yaml")
    assert spec.notify.command == ["/bin/sh", "-c", "echo hi"] and spec.notify.on == ["restart"]
    assert parse_spec("name: a\ncommand: x\nnotify: {desktop: true}\n", "j").notify.on == ["succeeded", "failed"]
    with pytest.raises(SpecError, match="notify"):
        parse_spec("name: a\ncommand: x\nnotify: {on: [sometimes]}\n", "job.yaml")


def test_notifier_gets_the_job_on_failure_restart_and_success(tmp_path, state_env):
    out = tmp_path / "told"
    out.mkdir()
    config = tmp_path / "config.yaml"  # the user's default, for jobs without notify:
    config.write_text(f"notify:\n  command: '{RECORD}'\n")
    env = {**state_env, "TRAINSUP_CONFIG": str(config), "OUT": str(out)}
    cli = Cli(env)
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        bad = cli.submit(write_spec(tmp_path / "bad.yaml", name="bad", command="exit 3", restart=FAST_RESTART,
                                    notify={"command": RECORD, "on": ["failed", "restart"]}))
        good = cli.submit(write_spec(tmp_path / "good.yaml", name="good", command="true"))
        cli.wait_state(bad, "failed")
        cli.wait_state(good, "succeeded")
        wait_for(lambda: len(list(out.iterdir())) == 3, 20, what="three notifications")
    finally:
        daemon.stop()
    assert sorted(p.name for p in out.iterdir()) == ["bad.failed", "bad.restart", "good.succeeded"]
    failed = _variables(out / "bad.failed")
    assert failed["TRAINSUP_NOTIFY_JOB_ID"] == bad and failed["TRAINSUP_NOTIFY_JOB_NAME"] == "bad"
    assert failed["TRAINSUP_NOTIFY_STATE"] == "failed" and failed["TRAINSUP_NOTIFY_REASON"] == "crash"
    assert failed["TRAINSUP_NOTIFY_ATTEMPT"] == "2" and failed["TRAINSUP_NOTIFY_LOG"].endswith("attempt-2.log")
    restart = _variables(out / "bad.restart")
    assert restart["TRAINSUP_NOTIFY_ATTEMPT"] == "1" and restart["TRAINSUP_NOTIFY_STATE"] in ("backoff", "queued")
    succeeded = _variables(out / "good.succeeded")
    assert succeeded["TRAINSUP_NOTIFY_JOB_ID"] == good and succeeded["TRAINSUP_NOTIFY_STATE"] == "succeeded"
    assert succeeded["TRAINSUP_NOTIFY_REASON"] == "succeeded" and succeeded["TRAINSUP_NOTIFY_EVENT"] == "succeeded"


def test_a_hanging_or_failing_notifier_neither_blocks_nor_crashes_the_daemon(tmp_path, state_env, cli, daemon):
    daemon.start()
    marker = f"sleep {600 + os.getpid() % 1000}"  # finds this test's notifier and nothing else
    hang = cli.submit(write_spec(tmp_path / "hang.yaml", name="hangs", command="true",
                                 notify={"command": f"exec {marker}", "timeout": "10m"}))
    broken = cli.submit(write_spec(tmp_path / "broken.yaml", name="broken", command="true",
                                   notify={"command": ["/no/such/notifier"], "on": ["succeeded"]}))
    fails = cli.submit(write_spec(tmp_path / "fails.yaml", name="fails", command="true",
                                  notify={"command": "echo oops; exit 7"}))
    try:
        for job in (hang, broken, fails):
            cli.wait_state(job, "succeeded")
        sleeper = wait_for(lambda: _find(marker), 20, what="the hanging notifier")
        # While the first notifier hangs, the daemon goes on starting and ending jobs.
        after = cli.submit(write_spec(tmp_path / "after.yaml", name="after", command="true"))
        cli.wait_state(after, "succeeded")
        assert sleeper.is_running()
        log = wait_for(lambda: "the notifier failed" in (t := daemon.log.read_text()) and t, 20, what="failure logged")
        assert "cannot start the notifier" in log and "oops" in log
        assert daemon.process.poll() is None
    finally:
        if (process := _find(marker)) is not None:
            process.kill()


def _find(cmdline: str) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        if " ".join(process.info["cmdline"] or []) == cmdline:
            return process
    return None


def test_a_notifier_past_its_timeout_is_killed_and_logged(tmp_path):
    with capture_logs() as logs:
        run_one("j1", "command", ["/bin/sh", "-c", f"sleep 30 & echo $! > {tmp_path}/child; wait"], {}, None, 0.5)
    assert [entry["event"] for entry in logs] == ["the notifier timed out and was killed"]
    child = int((tmp_path / "child").read_text())
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             10, what="its process group killed")
