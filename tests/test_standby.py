"""Warm standbys: an interpreter that has imported what the job imports becomes the next attempt.

The daemon's side on fakes (when a standby is started, used, dropped), the standby
process's own rules (which commands, what is stale), and end to end with the real daemon:
used after a SIGKILL, not used when a preloaded file changed, signals and exit statuses
reach the job as in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import signal
import sys
from pathlib import Path

import psutil
import pytest

from fakes import World
from support import JOBS, Cli, DaemonProcess, wait_for, write_spec
from trainsup.jobs.states import JobState
from trainsup.supervisor import cgroup
from trainsup.supervisor.attempts import STANDBY_AFTER_S
from trainsup.supervisor.daemon import IDLE_WAKEUP_S, STARTING_POLL_S, STARTING_WATCH_S, Daemon
from trainsup.supervisor.standby_process import (
    PythonEntry,
    module_source,
    preload_of,
    python_entry,
    top_level_imports,
    why_stale,
)

PY = sys.executable

# --- which commands can have a standby ---------------------------------------------------


@pytest.mark.parametrize("command, entry", [
    (["python", "train.py", "--lr", "1"], PythonEntry(["python"], "script", "train.py", ["--lr", "1"])),
    (["/venv/bin/python3.11", "-u", "-X", "dev", "t.py"], PythonEntry(["/venv/bin/python3.11", "-u", "-X", "dev"],
                                                                       "script", "t.py", [])),
    (["python3", "-OB", "-m", "pkg.train", "-c", "x"], PythonEntry(["python3", "-OB"], "module", "pkg.train",
                                                                    ["-c", "x"])),
    (["python", "-mpkg"], PythonEntry(["python"], "module", "pkg", [])),
    (["python", "-c", "print(1)"], None),
    (["python", "-i", "t.py"], None),
    (["python", "-"], None),
    (["python", "-m"], None),
    (["python"], None),
    (["torchrun", "--nproc-per-node", "2", "t.py"], None),
    (["bash", "-c", "python t.py"], None),
    (["pythonic", "t.py"], None),
])
def test_python_entry(command: list[str], entry: PythonEntry | None) -> None:
    assert python_entry(command, path="/nonexistent") == entry


def test_a_python_console_script_counts_as_python_running_it(tmp_path: Path) -> None:
    """torchrun, accelerate and the like are Python scripts on PATH: a standby can preload theirs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"mytool": f"#!{PY}\nimport json\n", "envtool": "#!/usr/bin/env python3\n", "run.sh": "#!/bin/sh\n",
               "flagged": f"#!{PY} -E\n"}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3").symlink_to(PY)
    path = str(bin_dir)
    assert python_entry(["mytool", "--x", "1"], path) == PythonEntry([PY], "script", str(bin_dir / "mytool"), ["--x", "1"])
    assert python_entry([str(bin_dir / "mytool")]) == PythonEntry([PY], "script", str(bin_dir / "mytool"), [])
    assert python_entry(["envtool"], path) == PythonEntry([str(bin_dir / "python3")], "script", str(bin_dir / "envtool"), [])
    assert python_entry(["run.sh"], path) is None
    assert python_entry(["flagged"], path) is None  # interpreter options on the #! line: not handled
    assert python_entry(["bin/mytool"], str(tmp_path)) is None  # relative to the job's working directory
    assert python_entry(["missing"], path) is None


def test_top_level_imports_are_what_a_standby_preloads(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import os, torch.nn as nn\nfrom collections import abc\nfrom . import x\n"
                      "def main():\n    import numpy\nif True:\n    import json\nimport torch\n")
    assert top_level_imports(str(script)) == ["os", "torch.nn", "collections", "torch"]
    script.write_text("this is not python(")
    assert top_level_imports(str(script)) == []


def test_a_module_job_preloads_what_its_module_imports_without_running_its_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("raise SystemExit('imported ahead of time')\n")
    (package / "train.py").write_text("import json\nimport proj.data\nfrom proj import model\n")
    (package / "tool").mkdir()
    (package / "tool" / "__main__.py").write_text("import csv\n")
    assert module_source("proj.train", ["", str(tmp_path)]) == str(package / "train.py")
    assert module_source("proj.tool", [str(tmp_path)]) == str(package / "tool" / "__main__.py")
    assert module_source("proj.missing", [str(tmp_path)]) is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    interpreter = [PY, "-m"]
    assert preload_of(PythonEntry(interpreter, "module", "proj.train", [])) == ["json"]  # not its own package
    assert preload_of(PythonEntry(interpreter, "module", "proj.tool", [])) == ["csv"]
    assert preload_of(PythonEntry(interpreter, "module", "proj.missing", [])) == []


def test_a_changed_environment_or_command_makes_a_standby_stale(tmp_path: Path) -> None:
    env = {"PATH": "/bin", "TRAINSUP_ATTEMPT": "2", "CUDA_VISIBLE_DEVICES": ""}
    entry, interpreter = python_entry(["python", "t.py"]), ["python"]
    cwd = os.getcwd()
    per_attempt = {**env, "TRAINSUP_ATTEMPT": "3", "CUDA_VISIBLE_DEVICES": "GPU-1"}
    assert why_stale({}, env, per_attempt, cwd, python_entry(["python", "t.py", "--resume", "x"]), interpreter) is None
    assert "PATH" in why_stale({}, env, {**env, "PATH": "/usr/bin"}, cwd, entry, interpreter)
    assert "HOME" in why_stale({}, env, {**env, "HOME": "/root"}, cwd, entry, interpreter)
    assert "interpreter" in why_stale({}, env, env, cwd, python_entry(["python", "-u", "t.py"]), interpreter)
    assert "working directory" in why_stale({}, env, env, str(tmp_path), entry, interpreter)
    module = tmp_path / "lib.py"
    module.write_text("A = 1\n")
    stamp = (module.stat().st_mtime_ns - 1, module.stat().st_size)
    assert "lib.py changed" in why_stale({str(module): stamp}, env, env, cwd, entry, interpreter)


# --- the daemon's side, on fakes ---------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def running(world: World, job_id: str, seconds: float) -> None:
    """Start the job's next attempt, see it run for `seconds`, then let the daemon look."""
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    world.clock.advance(seconds)
    world.attempts.prepare_standbys(world.clock.time())


def due(world: World, job_id: str) -> None:
    world.clock.advance(60)
    world.end_backoff(job_id)


def test_a_standby_waits_for_the_job_to_be_past_its_imports_then_becomes_the_next_attempt(world: World) -> None:
    job_id = world.submit(command=["python", "train.py"])
    running(world, job_id, STANDBY_AFTER_S / 2)
    assert world.launcher.standbys == []
    world.clock.advance(STANDBY_AFTER_S)
    world.attempts.prepare_standbys(world.clock.time())
    [standby] = world.launcher.standbys
    assert (standby.number, standby.run_dir) == (2, world.state.run_dir(job_id, 2))
    world.job_ended(world.launcher.plans[-1], signal=signal.SIGKILL)
    world.poll()
    due(world, job_id)
    plan = world.start(job_id)
    assert world.launcher.activated == [standby] and plan.number == 2
    assert world.store.attempts(job_id)[-1].monitor_pid == standby.pid


def test_no_standby_when_turned_off_or_the_command_is_not_python(world: World) -> None:
    off = world.submit("off", command=["python", "train.py"], standby=False)
    shell = world.submit("shell", command=["bash", "-c", "python train.py"])
    for job_id in (off, shell):
        running(world, job_id, STANDBY_AFTER_S * 2)
    assert world.launcher.standbys == []


def test_the_config_files_standby_is_the_default_a_job_can_override(world: World, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("standby: false\n")
    monkeypatch.setenv("TRAINSUP_CONFIG", str(config))
    default = world.submit("default", command=["python", "train.py"])
    asked = world.submit("asked", command=["python", "train.py"], standby={"preload": ["torch"]})
    for job_id in (default, asked):
        running(world, job_id, STANDBY_AFTER_S * 2)
    assert [s.job_id for s in world.launcher.standbys] == [asked]


def test_a_standby_is_dropped_when_the_job_will_not_start_again(world: World) -> None:
    job_id = world.submit(command=["python", "train.py"])
    running(world, job_id, STANDBY_AFTER_S * 2)
    assert job_id in world.attempts.standbys
    world.job_ended(world.launcher.plans[-1], exit_code=0)
    world.poll()
    assert world.job(job_id).state is JobState.SUCCEEDED
    assert job_id not in world.attempts.standbys


def test_a_gone_standby_means_a_fresh_monitor(world: World) -> None:
    job_id = world.submit(command=["python", "train.py"], restart={"initial": "0s"})
    running(world, job_id, STANDBY_AFTER_S * 2)
    [standby] = world.launcher.standbys
    world.launcher.alive[standby.pid] = False
    world.job_ended(world.launcher.plans[-1], signal=signal.SIGKILL)
    world.poll()
    due(world, job_id)
    world.start(job_id)
    assert world.launcher.activated == []
    assert world.store.attempts(job_id)[-1].monitor_pid != standby.pid


def test_the_daemon_looks_again_soon_while_a_new_attempt_is_not_seen_running(world: World) -> None:
    """Seen running within 0.1 s, not at the next idle tick: `status` says so, and a warm
    attempt's own standby starts then (its job may live only a second)."""
    daemon = Daemon(world.state, clock=world.clock, launcher=world.launcher)
    daemon.store, daemon.attempts = world.store, world.attempts
    assert daemon._next_timeout() == IDLE_WAKEUP_S
    plan = world.start(world.submit(command=["python", "train.py"]))
    assert daemon._next_timeout() == STARTING_POLL_S
    world.job_started(plan)
    world.poll()
    assert daemon._next_timeout() == IDLE_WAKEUP_S
    stuck = world.start(world.submit(name="stuck", command=["python", "train.py"]))  # e.g. waiting for a lock
    world.clock.advance(STARTING_WATCH_S)
    assert daemon._next_timeout() == IDLE_WAKEUP_S and not world.attempts.live[stuck.job.id].started_seen


# --- end to end: the real daemon, monitor and standby process ------------------------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(JOBS / "standby_job.py", work)
    (work / "standby_lib.py").write_text("VERSION = 1\n")
    return work


def standby_spec(work: Path, *args: str, **restart) -> Path:
    return write_spec(
        work / "job.yaml", name="warm", command=[PY, str(work / "standby_job.py"), *args], workdir=str(work),
        env={"STANDBY_TEST_VALUE": "kept"}, standby={"preload": ["standby_lib"]},  # on, whatever the config says
        restart={"initial": "0.1s", "max": "0.2s", **restart}, grace_period="10s",
    )


def lines(cli: Cli, job: str, number: int) -> list[dict]:
    path = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job / f"attempt-{number}.log"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def started(cli: Cli, job: str, number: int) -> dict:
    path = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job / f"attempt-{number}.run" / "started.json"
    return wait_for(lambda: path.exists() and json.loads(path.read_text()), 30, 0.05, f"attempt {number} started")


def standby_ready(cli: Cli, job: str, number: int) -> None:
    log = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job / f"standby-{number}" / "monitor.log"
    wait_for(lambda: log.exists() and "standby ready" in log.read_text(), 30, 0.1, f"standby {number} ready")


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_attempt(cli: Cli, job: str, number: int) -> None:
    pid = wait_for(lambda: lines(cli, job, number), 30, 0.05, f"attempt {number} output")[0]["pid"]
    os.kill(pid, signal.SIGKILL)


def test_after_a_sigkill_the_standby_is_the_next_attempt_as_a_fresh_process_would_be(
        cli: Cli, daemon: DaemonProcess, work: Path) -> None:
    daemon.start()
    job = cli.submit(standby_spec(work))
    standby_ready(cli, job, 2)
    kill_attempt(cli, job, 1)
    assert started(cli, job, 2)["standby"] == "used"
    [first] = wait_for(lambda: lines(cli, job, 2), 30, 0.05, "attempt 2 output")
    assert first["preloaded"] is True and first["name"] == "__main__"
    assert first["argv"] == [str(work / "standby_job.py")] and first["path0"] == str(work)
    assert first["run_dir"].endswith("attempt-2.run") and first["secret"] == "kept"
    wait_for(lambda: "its warm standby" in cli.run("show", job).stdout, 30, 0.1, "the running event")
    standby_ready(cli, job, 3)  # the next one is ready at once: no import to wait for
    shown = wait_for(lambda: "warm standby: ready for attempt 3" in (out := cli.run("status", job).stdout) and out,
                     10, 0.1, "status to show the standby")
    assert "preloaded standby_lib" in shown and "resident" in shown
    cli.run("cancel", job)
    assert cli.wait_state(job, "cancelled")["state"] == "cancelled"
    log = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job / "attempt-2.log"
    assert "stopping" in log.read_text()  # the stop signal reached the job (not blocked in the standby)
    jobs_dir = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job
    wait_for(lambda: not list(jobs_dir.glob("standby-*")), 30, 0.1, "the standby gone with the job")


@pytest.mark.parametrize("ending", ["cancel", "daemon stop in a backoff", "daemon kill -9 in a backoff"])
def test_a_standby_waits_in_its_attempts_run_dir_and_cgroup_which_go_when_it_is_not_needed(
        cli: Cli, daemon: DaemonProcess, work: Path, ending: str) -> None:
    """What activation needs is made while the standby waits: none of it delays a restart.
    Unused (the job was cancelled; the daemon stops while the job waits out a backoff, with
    no attempt left to wait for), both are removed with the standby; after a daemon killed
    with SIGKILL, by the next daemon when it starts."""
    daemon.start()
    job = cli.submit(standby_spec(work, initial="60s", max="60s"))
    standby_ready(cli, job, 2)
    job_dir = Path(cli.env["TRAINSUP_HOME"]) / "jobs" / job
    assert (job_dir / "attempt-2.run" / "heartbeat").is_dir()
    standby_pid = json.loads((job_dir / "standby-2" / "ready.json").read_text())["pid"]
    first_cgroup = json.loads((job_dir / "attempt-1.run" / "launch.json").read_text())["cgroup"]
    if first_cgroup is not None:  # cgroups work here: the standby's process is in attempt 2's already
        assert Path(first_cgroup).name == f"trainsup-{job}-1"
        assert cgroup.cgroup_of(standby_pid) == Path(first_cgroup).with_name(f"trainsup-{job}-2")
    if ending == "cancel":
        cli.run("cancel", job)
        cli.wait_state(job, "cancelled")
    elif ending == "daemon stop in a backoff":
        kill_attempt(cli, job, 1)
        cli.wait_state(job, "backoff")
        assert daemon.stop() == 0
    else:
        kill_attempt(cli, job, 1)
        cli.wait_state(job, "backoff")
        daemon.kill9()
        wait_for(lambda: exited(standby_pid), 30, 0.1, "the standby to exit with its daemon")
        assert (job_dir / "attempt-2.run").exists()  # what the next daemon must remove
        daemon.start()
    wait_for(lambda: not (job_dir / "attempt-2.run").exists(), 30, 0.1, "the unused run dir removed")
    if first_cgroup is not None:
        wait_for(lambda: not Path(first_cgroup).with_name(f"trainsup-{job}-2").exists(), 30, 0.1,
                 "the unused cgroup removed")


def test_a_job_run_by_a_python_console_script_gets_a_standby_too(cli: Cli, daemon: DaemonProcess, work: Path) -> None:
    """A command like `torchrun …`: a Python script on PATH, run as `python <it>` would run it."""
    tool = work / "warmtool"
    tool.write_text(f"#!{PY}\n" + (work / "standby_job.py").read_text())
    tool.chmod(0o755)
    spec = write_spec(work / "tool.yaml", name="tool", command=["warmtool"], workdir=str(work),
                      env={"PATH": f"{work}{os.pathsep}{os.environ['PATH']}"}, standby={"preload": ["standby_lib"]},
                      restart={"initial": "0.1s", "max": "0.2s"}, grace_period="10s")
    daemon.start()
    job = cli.submit(spec)
    standby_ready(cli, job, 2)
    kill_attempt(cli, job, 1)
    assert started(cli, job, 2)["standby"] == "used"
    [first] = wait_for(lambda: lines(cli, job, 2), 30, 0.05, "attempt 2 output")
    assert first["preloaded"] is True and first["name"] == "__main__" and first["argv"] == [str(tool)]
    assert first["path0"] == str(work)
    cli.run("cancel", job)
    cli.wait_state(job, "cancelled")


def test_a_preloaded_file_that_changed_means_a_fresh_process(cli: Cli, daemon: DaemonProcess, work: Path) -> None:
    daemon.start()
    job = cli.submit(standby_spec(work))
    standby_ready(cli, job, 2)
    (work / "standby_lib.py").write_text("VERSION = 2  # edited while attempt 1 ran\n")
    kill_attempt(cli, job, 1)
    note = started(cli, job, 2)["standby"]
    assert note.startswith("not used:") and "standby_lib.py changed" in note
    [first] = wait_for(lambda: lines(cli, job, 2), 30, 0.05, "attempt 2 output")
    assert first["preloaded"] is False and first["version"] == 2
    cli.run("cancel", job)
    cli.wait_state(job, "cancelled")


def test_the_exit_status_of_a_standby_job_is_the_jobs(cli: Cli, daemon: DaemonProcess, work: Path) -> None:
    daemon.start()
    job = cli.submit(standby_spec(work, "--exit-on", "2", "--exit-code", "7", max_restarts=1))
    standby_ready(cli, job, 2)
    kill_attempt(cli, job, 1)
    final = cli.wait_state(job, "failed")
    assert started(cli, job, 2)["standby"] == "used"
    assert final["attempts"][1]["exit_code"] == 7


def test_a_torch_training_job_killed_twice_resumes_through_standbys_bit_exactly(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path) -> None:
    import torch

    script = JOBS / "trainer_job.py"
    args = ["--epochs", "12", "--step-delay", "0.1"]
    reference_out = tmp_path / "reference.pt"
    reference = subprocess.Popen([PY, str(script), "--out", str(reference_out), *args,
                                  "--checkpoint-dir", str(tmp_path / "reference-ckpt")],
                                 env={k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "supervised.pt"
    spec = write_spec(tmp_path / "train.yaml", name="train", command=[PY, str(script), "--out", str(out), *args],
                      checkpoint_dir="ckpt", standby=True, restart={"initial": "0s", "max_restarts": 3})
    daemon.start()
    job = cli.submit(spec)
    for number in (1, 2):
        standby_ready(cli, job, number + 1)  # torch (and torch._dynamo) imported, waiting
        pid = started(cli, job, number)["job_pid"]
        os.kill(pid, signal.SIGKILL)
        assert started(cli, job, number + 1)["standby"] == "used"
    final = cli.wait_state(job, "succeeded", "failed", timeout=120)
    assert final["state"] == "succeeded"
    assert reference.wait(timeout=120) == 0
    resumed, uninterrupted = torch.load(out, weights_only=True), torch.load(reference_out, weights_only=True)
    assert resumed["step"] == uninterrupted["step"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), f"{name} differs after two standby restarts"
