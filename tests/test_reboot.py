"""Reboots and power cuts, simulated: every process of the service dies at once.

The boot id comes from the file named by TRAINSUP_BOOT_ID_FILE, so a "reboot" is
SIGKILL to the daemon, the monitors and the jobs, then a new id in that file.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable
FAILURES = {"crash", "cuda_oom", "host_oom", "hang", "lost", "spawn_failed"}


def _boot(state_env: dict[str, str], tmp_path: Path) -> Path:
    """Point the daemon at a boot id file holding boot id A."""
    path = tmp_path / "boot_id"
    path.write_text(f"{uuid.uuid4()}\n")
    state_env["TRAINSUP_BOOT_ID_FILE"] = str(path)
    return path


def _counter_spec(tmp_path: Path, name: str, **extra) -> Path:
    return write_spec(
        tmp_path / f"{name}.yaml", name=name,
        command=[PY, str(JOBS / "counter.py"), "--steps", "40", "--interval", "0.05"],
        checkpoint_dir=f"ckpt-{name}", restart={"max_restarts": 0}, **extra,
    )


def _power_cut(daemon: DaemonProcess, state_root: Path) -> None:
    """SIGKILL the daemon, then every monitor of this state dir, then every job process."""
    daemon.kill9()
    monitors = [
        p for p in psutil.process_iter(["cmdline"])
        if "trainsup.supervisor.monitor" in (p.info["cmdline"] or []) and str(state_root) in " ".join(p.info["cmdline"])
    ]
    assert monitors, "a monitor was running"
    doomed = []
    for monitor in monitors:
        doomed += [monitor, *monitor.children(recursive=True)]
    for process in doomed:  # the monitor first, so it cannot record the job's death
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(doomed, timeout=10)
    assert not alive, f"still alive after SIGKILL: {alive}"


def _resumed_at(cli: Cli, job: str, attempt: int) -> int:
    logs = cli.run("logs", job).stdout
    return int(logs.split(f"attempt {attempt} starting at step ")[1].split()[0])


def _run_until_step(cli: Cli, daemon: DaemonProcess, spec: Path, step: int) -> str:
    daemon.start()
    job = cli.submit(spec)
    wait_for(lambda: f"step {step}\n" in cli.run("logs", job).stdout, 60, 0.2, f"step {step}")
    return job


def test_reboot_resumes_from_checkpoint_as_host_restart(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    boot_id = _boot(state_env, tmp_path)
    job = _run_until_step(cli, daemon, _counter_spec(tmp_path, "rebooted"), 5)
    pid = wait_for(lambda: cli.job(job)["pid"], 30, 0.1, "the daemon to record the job's pid")
    _power_cut(daemon, Path(state_env["TRAINSUP_HOME"]))
    assert not list(Path(state_env["TRAINSUP_HOME"]).glob("jobs/*/**/ended.json")), "nobody recorded an exit"
    boot_id.write_text(f"{uuid.uuid4()}\n")

    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed", "held")
    assert final["state"] == "succeeded", final
    attempts = final["attempts"]
    assert [a["reason"] for a in attempts] == ["host_restart", "succeeded"]
    assert [a["number"] for a in attempts] == [1, 2]
    assert attempts[0]["exit_code"] is None and attempts[0]["signal"] is None
    assert not FAILURES & {a["reason"] for a in attempts}, "a reboot is not a failure"
    assert _resumed_at(cli, job, 2) >= 5, "attempt 2 resumed from the checkpoint"
    assert attempts[0]["pid"] == pid


def test_on_boot_hold_keeps_job_until_released(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    boot_id = _boot(state_env, tmp_path)
    job = _run_until_step(cli, daemon, _counter_spec(tmp_path, "careful", on_boot="hold"), 3)
    _power_cut(daemon, Path(state_env["TRAINSUP_HOME"]))
    boot_id.write_text(f"{uuid.uuid4()}\n")

    daemon.start()
    held = cli.wait_state(job, "held", "queued", "starting", "running", "succeeded", "failed")
    assert held["state"] == "held", held
    assert [a["reason"] for a in held["attempts"]] == ["host_restart"]
    time.sleep(1.0)
    assert cli.job(job)["state"] == "held", "a held job does not start by itself"

    cli.run("release", job)
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded"
    assert [a["reason"] for a in final["attempts"]] == ["host_restart", "succeeded"]
    assert _resumed_at(cli, job, 2) >= 3


def test_same_boot_without_monitor_is_not_a_host_restart(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    """Control: the same power cut without a new boot id is a lost attempt, a failure."""
    _boot(state_env, tmp_path)
    spec = write_spec(
        tmp_path / "lost.yaml", name="lost",
        command=[PY, str(JOBS / "counter.py"), "--steps", "40", "--interval", "0.05"],
        checkpoint_dir="ckpt-lost", restart={"max_restarts": 1, "initial": "0.05s"},
    )
    job = _run_until_step(cli, daemon, spec, 3)
    _power_cut(daemon, Path(state_env["TRAINSUP_HOME"]))
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed")
    assert [a["reason"] for a in final["attempts"]] == ["lost", "succeeded"]


def test_submissions_survive_daemon_kills(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path):
    rng = random.Random(5)
    daemon.start()
    submitted: list[str] = []
    errors: list[BaseException] = []

    def submit_stream() -> None:
        try:
            for i in range(8):
                spec = write_spec(tmp_path / f"s{i}.yaml", name=f"s{i}", command=f"echo submission {i}")
                submitted.append(cli.submit(spec))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    submitter = threading.Thread(target=submit_stream)
    submitter.start()
    kills = 0
    while submitter.is_alive() or kills < 2:
        time.sleep(rng.uniform(0.05, 0.6))
        daemon.kill9()
        kills += 1
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.1, 0.8))  # submissions land while nobody is up
        daemon.start()
    submitter.join()
    assert not errors, errors
    assert len(submitted) == len(set(submitted)) == 8

    def all_done() -> list[dict] | None:
        rows = cli.json("status")
        return rows if all(r["state"] == "succeeded" for r in rows) and len(rows) == 8 else None

    rows = wait_for(all_done, 90, 0.3, "every submission to run")
    assert sorted(r["id"] for r in rows) == sorted(submitted)
    for row in rows:
        # A daemon killed between recording an attempt and starting its monitor leaves an
        # attempt that never ran: recorded `interrupted`, never a second run of the job.
        reasons = [a["reason"] for a in cli.job(row["id"])["attempts"]]
        assert reasons[-1] == "succeeded" and all(r == "interrupted" for r in reasons[:-1]), reasons
    assert not list((Path(state_env["TRAINSUP_HOME"]) / "inbox").glob("*.json"))
    for i, job in enumerate(submitted):
        assert cli.run("logs", job).stdout.count(f"submission {i}\n") == 1
