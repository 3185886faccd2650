"""Chaos: kill -9 the daemon 30 times while 20 jobs are submitted, run, fail, get cancelled.

Every job must end exactly once, in the right state, with the right attempts, and no
two attempts of one job may ever overlap: each attempt's process records its own
[start, end] wall-clock interval and pid in a file of its own.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from support import JOBS, TRAINSUP, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable
SEED = 20240611
KILLS = 30
EXPECTED = {
    "ok": ("succeeded", ["succeeded"]),
    "flaky": ("succeeded", ["crash", "succeeded"]),
    "cancel": ("cancelled", ["cancelled"]),
}


def _spec(tmp_path: Path, name: str, kind: str, records: Path, rng: random.Random) -> Path:
    command = [PY, str(JOBS / "resumable.py"), "--record", str(records), "--interval", "0.05"]
    if kind == "cancel":
        command += ["--steps", "100000", "--on-term", "exit"]
    else:
        command += ["--steps", str(rng.randint(2, 8))]
    if kind == "flaky":
        command += ["--fail-attempt-1", "3"]
    return write_spec(
        tmp_path / f"{name}.yaml", name=name, command=command, checkpoint_dir=f"ckpt/{name}",
        grace_period="10s", restart={"max_restarts": 3, "initial": "0.05s", "max": "0.2s", "crash_loop": 0},
    )


def _records(directory: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in directory.glob("attempt-*.json")), key=lambda r: r["start"])


def _start_and_kill_before_ready(daemon: DaemonProcess, delay: float) -> None:
    """A daemon killed anywhere in its start-up: recovery, intake, the first step."""
    with open(daemon.log, "ab") as handle:
        daemon.process = subprocess.Popen([TRAINSUP, "daemon"], env=daemon.env, stdout=handle, stderr=handle)
    time.sleep(delay)
    daemon.kill9()


def test_thirty_daemon_kills_during_a_stream_of_jobs(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    rng = random.Random(SEED)
    kinds = ["ok"] * 12 + ["flaky"] * 5 + ["cancel"] * 3
    rng.shuffle(kinds)
    names = [f"j{i:02d}-{kind}" for i, kind in enumerate(kinds)]
    records = {name: tmp_path / "records" / name for name in names}
    specs = {}
    for name, kind in zip(names, kinds):
        records[name].mkdir(parents=True)
        specs[name] = _spec(tmp_path, name, kind, records[name], rng)
    pauses = [rng.uniform(0.1, 0.6) for _ in names]

    ids: dict[str, str] = {}
    errors: list[BaseException] = []

    def submit_stream() -> None:
        try:
            cancellers = []
            for name, kind, pause in zip(names, kinds, pauses):
                ids[name] = cli.submit(specs[name])
                if kind == "cancel":
                    cancellers.append(threading.Thread(target=cancel_when_running, args=(name,)))
                    cancellers[-1].start()
                time.sleep(pause)
            for thread in cancellers:
                thread.join()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def cancel_when_running(name: str) -> None:
        wait_for(lambda: any(records[name].glob("attempt-*.json")), 120, 0.1, f"{name} to run")
        time.sleep(0.3)
        cli.run("cancel", ids[name])

    submitter = threading.Thread(target=submit_stream)
    started = time.monotonic()
    daemon.start()
    submitter.start()
    for kill in range(KILLS):
        delay = rng.uniform(0.05, 0.5)
        if kill % 3 == 2:
            _start_and_kill_before_ready(daemon, delay)
        else:
            if kill:
                daemon.start()
            time.sleep(delay)
            daemon.kill9()
    daemon.start()
    submitter.join(timeout=120)
    assert not errors, errors
    assert len(ids) == len(names)

    def settled() -> dict[str, dict] | None:
        rows = {r["id"]: r for r in cli.json("status")}
        done = all(rows.get(ids[n], {}).get("state") in ("succeeded", "failed", "cancelled") for n in names)
        return rows if done else None

    wait_for(settled, 90, 0.5, "every job to end")
    elapsed = time.monotonic() - started

    problems, phantoms = [], 0
    for name, kind in zip(names, kinds):
        status = cli.job(ids[name])
        attempts = status["attempts"]
        assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1)), name
        assert all(a["ended_at"] is not None and a["ended_at"] >= a["started_at"] and a["reason"] for a in attempts), \
            f"{name}: every attempt ended: {attempts}"
        # An attempt whose process never started: the daemon died between recording
        # it and spawning its monitor. See test_daemon_death_before_spawn_is_not_a_failure.
        ran_attempts = [a for a in attempts if a["pid"] is not None]
        never_ran = [a for a in attempts if a["pid"] is None]
        phantoms += len(never_ran)
        assert all(a["reason"] == "interrupted" for a in never_ran), f"{name}: {attempts}"
        state, reasons = EXPECTED[kind]
        if kind == "flaky" and attempts[0]["pid"] is None:
            reasons = reasons[1:]  # the job fails only as attempt 1, and attempt 1 never ran
        if status["state"] != state or [a["reason"] for a in ran_attempts] != reasons:
            problems.append(f"{name}: {status['state']} {[(a['reason'], a['detail']) for a in attempts]}")
            continue
        ran = _records(records[name])
        assert sorted(r["attempt"] for r in ran) == [a["number"] for a in ran_attempts], \
            f"{name}: every attempt ran exactly one process: {ran} {attempts}"
        assert {a["pid"] for a in ran_attempts} == {r["pid"] for r in ran}, name
        assert all(r["end"] is not None for r in ran), f"{name}: a process never finished: {ran}"
        for before, after in zip(ran, ran[1:]):
            assert before["end"] <= after["start"], f"{name}: attempts overlapped: {before} {after}"
        finished = [r for r in ran if r["exit_code"] == 0]
        assert len(finished) == (0 if kind == "cancel" else 1), f"{name} finished {len(finished)} times"
    assert not problems, "\n".join(problems)
    print(f"chaos: {KILLS} daemon kills, {len(names)} jobs, {phantoms} attempts never spawned, {elapsed:.1f}s")


# The real daemon, dying (as if SIGKILLed) the moment it would spawn an attempt's
# monitor: the attempt row is committed; no monitor and no job process ever exist.
DIE_BEFORE_SPAWN = textwrap.dedent("""
    import os
    from trainsup.paths import StateDir
    from trainsup.supervisor.daemon import Daemon
    from trainsup.supervisor.launcher import ProcessLauncher

    class DieBeforeSpawn(ProcessLauncher):
        def start(self, plan):
            os._exit(137)

    Daemon(StateDir.from_env(), launcher=DieBeforeSpawn()).run()
""")


def test_daemon_death_before_spawn_is_not_a_failure(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = write_spec(tmp_path / "once.yaml", name="once", command="echo ran",
                      restart={"max_restarts": 0, "initial": "0.05s"})
    job = cli.submit(spec)
    died = subprocess.run([PY, "-c", DIE_BEFORE_SPAWN], env=cli.env, capture_output=True, text=True, timeout=60)
    assert died.returncode == 137, died.stderr
    [phantom] = cli.job(job)["attempts"]
    assert phantom["ended_at"] is None and phantom["pid"] is None
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded", final["result"]


# The real daemon, dying the moment its first monitor exists but before its pid is
# recorded: the next daemon must find that monitor by its command line and adopt it.
DIE_AFTER_SPAWN = textwrap.dedent("""
    import os
    from trainsup.paths import StateDir
    from trainsup.supervisor.daemon import Daemon
    from trainsup.supervisor.launcher import ProcessLauncher

    class DieAfterSpawn(ProcessLauncher):
        def start(self, plan):
            super().start(plan)
            os._exit(137)

    Daemon(StateDir.from_env(), launcher=DieAfterSpawn()).run()
""")


def test_daemon_death_right_after_spawn_adopts_the_monitor(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    records = tmp_path / "records"
    records.mkdir()
    # 4 s: still running when the new daemon starts, even on a loaded machine (else it reads "recovered")
    spec = write_spec(tmp_path / "adopt.yaml", name="adopt",
                      command=[PY, str(JOBS / "resumable.py"), "--steps", "40", "--interval", "0.1", "--record", str(records)],
                      restart={"max_restarts": 0})
    job = cli.submit(spec)
    died = subprocess.run([PY, "-c", DIE_AFTER_SPAWN], env=cli.env, capture_output=True, text=True, timeout=60)
    assert died.returncode == 137, died.stderr
    [unrecorded] = cli.job(job)["attempts"]
    assert unrecorded["ended_at"] is None
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed")
    assert final["state"] == "succeeded", final["result"]
    assert [a["reason"] for a in final["attempts"]] == ["succeeded"], "adopted, not started a second time"
    time.sleep(0.5)
    assert len(list(records.glob("attempt-*.json"))) == 1, "the job ran exactly once"
    assert "adopted" in [e["kind"] for e in cli.json("show", job)["events"]]
