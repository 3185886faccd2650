"""The CLI's own surface: usage errors in one line, service install, doctor, help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import TRAINSUP, Cli, DaemonProcess, wait_for, write_spec
from trainsup import __version__
from trainsup.gpu.simulated import write_sim
from trainsup.units import format_span


@pytest.mark.parametrize("args, fragment", [
    (["logs"], "Missing argument 'JOB'"),
    (["bogus"], "No such command 'bogus'"),
    (["status", "--bad"], "No such option '--bad'"),
    (["logs", "x", "--tail", "0"], "--tail"),
    (["service", "install", "--sideways"], "No such option"),
])
def test_usage_errors_are_one_line(cli: Cli, args: list[str], fragment: str):
    result = cli.run(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainsup: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_no_arguments_prints_help(cli: Cli):
    result = cli.run(check=False)
    assert result.returncode == 0 and "submit" in result.stdout and "status" in result.stdout


def test_service_install_dry_run_renders_this_installation(cli: Cli):
    result = cli.json("service", "install", "--dry-run")
    assert result["dry_run"] is True and result["unit"] == "trainsup.service"
    assert ["--user", "daemon-reload"] in result["commands"]
    text = cli.run("service", "install", "--dry-run").stdout
    assert "Type=notify" in text and "trainsup daemon" in text and "@TRAINSUP@" not in text


def test_doctor_reports_every_check(cli: Cli):
    result = cli.run("doctor", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert {"state_dir", "daemon", "nvml", "service", "linger"} <= set(checks)
    assert checks["daemon"]["ok"] is False, "no daemon runs for this fresh state dir"
    assert result.returncode == 1, "a failing check makes doctor exit non-zero"


# --- issue 12: answers that tell the truth ------------------------------------------------

STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(600)")


def _inbox(cli: Cli) -> list[str]:
    folder = Path(cli.env["TRAINSUP_HOME"]) / "inbox"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def _one_sentence(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("trainsup: "), result.stderr
    assert all(f in line for f in fragments), line
    return line


def test_control_requests_that_nothing_would_follow_are_refused(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    done = cli.submit(write_spec(tmp_path / "done.yaml", name="done", command="echo hi"))
    stubborn = cli.submit(write_spec(tmp_path / "stub.yaml", name="stubborn", command=[sys.executable, "-c", STUBBORN],
                                     grace_period="60s"))
    cli.wait_state(done, "succeeded")
    cli.wait_state(stubborn, "running")

    # Each of these printed "… requested" and exited 0 while the daemon ignored it.
    _one_sentence(cli.run("cancel", done, check=False), 1, "already succeeded", "nothing to cancel")
    _one_sentence(cli.run("hold", stubborn, check=False), 1, "is running", "waiting job")
    _one_sentence(cli.run("restart", stubborn, check=False), 1, "is running", "cancel it first")
    _one_sentence(cli.run("release", stubborn, check=False), 1, "not held")
    assert _inbox(cli) == [], "a refused request is not written"
    assert cli.job(done)["state"] == "succeeded" and cli.job(stubborn)["state"] == "running"

    answer = cli.json("cancel", stubborn)
    assert answer["requested"] is True and answer["state"] == "running"
    assert "SIGKILL after 1m00s" in answer["message"] and "--force" in answer["message"]
    cli.wait_state(stubborn, "stopping")
    wait_for(lambda: _inbox(cli) == [], 10, what="the daemon to take the cancel")

    # The job ignores SIGTERM: asked again, cancel says how long is left, and asks nothing new.
    again = cli.run("cancel", stubborn)
    assert re.search(r"already being cancelled .* SIGKILL in (59|58|57|56|55)s", again.stdout), again.stdout
    assert _inbox(cli) == []

    started = time.monotonic()
    assert "SIGKILL to its processes now" in cli.run("cancel", "--force", stubborn).stdout
    final = cli.wait_state(stubborn, "cancelled", "failed", "succeeded", "backoff", timeout=20)
    assert time.monotonic() - started < 20, "--force does not wait out the 60 s grace period"
    assert final["state"] == "cancelled"
    [attempt] = final["attempts"]
    assert attempt["reason"] == "cancelled" and attempt["signal"] == 9
    assert "cancel_forced" in {e["kind"] for e in cli.json("show", stubborn)["events"]}
    assert cli.run("cancel", stubborn).stdout.strip() == f"job {stubborn} is already cancelled."


def test_logs_json_bad_attempt_broken_pipe_and_version(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    marker = tmp_path / "second"
    command = f"if [ -e {marker} ]; then echo second; seq 1 200000; else touch {marker}; echo first; exit 3; fi"
    job = cli.submit(write_spec(tmp_path / "twice.yaml", name="twice", command=command,
                                restart={"initial": "0.05s", "crash_loop": 0}))
    cli.wait_state(job, "succeeded", "failed")

    result = cli.run("logs", job, "--json", "--tail", "2")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"job": job, "attempt": 2, "line": "199999"}, {"job": job, "attempt": 2, "line": "200000"}]
    first = [json.loads(line) for line in cli.run("logs", job, "--json", "--attempt", "1").stdout.splitlines()]
    assert first == [{"job": job, "attempt": 1, "line": "first"}]

    _one_sentence(cli.run("logs", job, "--attempt", "9", check=False), 1, "has 2 attempts", "no attempt 9")

    # `trainsup logs JOB | head -1`: the reader goes away early; no "Broken pipe", no traceback.
    reader = subprocess.Popen([TRAINSUP, "logs", job], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.readline().startswith("──── trainsup: attempt 1".encode())
    reader.stdout.close()
    code = reader.wait(30)
    stderr = reader.stderr.read().decode()
    assert code in (0, 141) and stderr == "", (code, stderr)

    assert cli.run("--version").stdout.strip() == f"trainsup {__version__}"


def test_a_waiting_job_says_why(cli: Cli, daemon: DaemonProcess, tmp_path: Path, state_env: dict[str, str]):
    sim = tmp_path / "gpus.json"
    write_sim(sim, 1)
    state_env["TRAINSUP_SIMULATED_GPUS"] = str(sim)
    daemon.start()
    holder = cli.submit(write_spec(tmp_path / "holder.yaml", name="holder", command="sleep 600", gpus=1,
                                   grace_period="1s"))
    cli.wait_state(holder, "running")
    waiter = cli.submit(write_spec(tmp_path / "waiter.yaml", name="waiter", command="echo never", gpus=1))
    slow = cli.submit(write_spec(tmp_path / "slow.yaml", name="slow", command="exit 1",
                                 restart={"initial": "3d", "max": "3d", "crash_loop": 0}))
    cli.wait_state(slow, "backoff")
    wait_for(lambda: cli.json("status", waiter).get("waiting"), 20, what="the daemon to say why it waits")

    table = cli.run("status").stdout
    waiting_line = next(line for line in table.splitlines() if line.startswith(waiter))
    assert "queued: waiting for 1 free GPU" in waiting_line, table
    backoff_line = next(line for line in table.splitlines() if line.startswith(slow))
    assert re.search(r"backoff \((\d+d\d\dh|\d+h\d\dm)\)", backoff_line), backoff_line

    never = cli.run("logs", waiter)
    assert never.stdout == ""
    assert never.stderr.strip() == (f"trainsup: job {waiter}: no attempt has started yet "
                                    "(queued: waiting for 1 free GPU(s)).")
    _one_sentence(cli.run("logs", waiter, "--attempt", "1", check=False), 1, "no attempt 1", "waiting for 1 free GPU")


def test_absurd_durations_read_as_such():
    assert format_span(359999996395) == "over a year"
    assert format_span(3 * 86400 + 4 * 3600) == "3d04h"
    assert format_span(90) == "1m30s"


@pytest.mark.parametrize("action, state, answer", [
    ("cancel", "queued", "will"), ("cancel", "held", "will"), ("cancel", "backoff", "will"),
    ("cancel", "running", "will"), ("cancel", "cancelled", "already"), ("cancel", "succeeded", "refused"),
    ("cancel", "failed", "refused"),
    ("restart", "failed", "will"), ("restart", "cancelled", "will"), ("restart", "succeeded", "will"),
    ("restart", "queued", "refused"), ("restart", "running", "refused"), ("restart", "held", "refused"),
    ("hold", "queued", "will"), ("hold", "backoff", "will"), ("hold", "held", "already"),
    ("hold", "running", "refused"), ("hold", "starting", "refused"), ("hold", "succeeded", "refused"),
    ("release", "held", "will"), ("release", "queued", "already"), ("release", "running", "refused"),
    ("release", "failed", "refused"),
])
def test_every_control_answer(action: str, state: str, answer: str):
    from types import SimpleNamespace

    from trainsup.commands.common import JobRef
    from trainsup.commands.control import _answer
    from trainsup.errors import TrainsupError
    from trainsup.jobs.states import JobState

    job = SimpleNamespace(state=JobState(state), state_since=0.0, stop_requested=None,
                          spec=SimpleNamespace(grace_period=30.0, stop_signal="SIGTERM"))
    ref = JobRef("0123abcd", "x", False)
    if answer == "refused":
        with pytest.raises(TrainsupError) as refused:
            _answer(ref, job, action, False, 10.0)
        assert "0123abcd" in str(refused.value) and str(refused.value).endswith(".")
    else:
        result = _answer(ref, job, action, False, 10.0)
        assert result.requested is (answer == "will") and result.state == state


def test_show_says_what_the_next_attempt_will_find(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    """The words of the "attempt N starting" event, for a job that has not finished; none once it has."""
    checkpoints, guide = tmp_path / "ckpt", tmp_path / "guide-ckpt"
    ten_minutes_ago = time.time() - 600
    for folder, name in ((checkpoints, "last.ckpt"), (guide, "last_model.pth")):
        folder.mkdir()
        (folder / name).write_bytes(b"weights")
        os.utime(folder / name, (ten_minutes_ago, ten_minutes_ago))
    resume = {"args": ["--resume", "{checkpoint}"], "checkpoint": "*.pth"}
    lightning, plain, fresh = (
        cli.submit(write_spec(tmp_path / f"{name}.yaml", name=name, command="true", checkpoint_dir=str(folder), **extra),
                   "--delay", "1h")
        for name, folder, extra in (("l", checkpoints, {}), ("p", guide, {"resume": resume}), ("f", tmp_path / "no", {})))
    assert "next attempt will find: last.ckpt, written 10 min ago" in cli.run("show", lightning).stdout  # not taken yet
    daemon.start()
    wait_for(lambda: cli.json("show", lightning).get("checkpoint_dir"), 30, what="the daemon to take the job")
    assert "next attempt will find: last.ckpt, written 10 min ago" in cli.run("show", lightning).stdout
    assert "next attempt will find: last_model.pth, written 10 min ago" in cli.run("show", plain).stdout
    assert "next attempt will find: no checkpoint yet: starting fresh" in cli.run("show", fresh).stdout
    assert cli.json("show", lightning)["next_attempt"] == {
        "checkpoint": "last.ckpt", "layout": "lightning", "written_at": ten_minutes_ago,
        "message": "last.ckpt, written 10 min ago"}
    cli.run("cancel", lightning)
    cli.wait_state(lightning, "cancelled")
    assert "next attempt" not in cli.run("show", lightning).stdout
    assert cli.json("show", lightning)["next_attempt"] is None
