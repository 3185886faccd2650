"""A full disk under TRAINSUP_HOME: a real, small tmpfs filled up while a daemon runs.

Needs root (mount); skipped elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import World
from support import Cli, DaemonProcess, kill_leftover_monitors, small_tmpfs, wait_for, write_spec
from trainsup.jobs.states import EndReason, JobState
from trainsup.jobs.store import Store
from trainsup.paths import StateDir


class SmallDisk:
    """A tmpfs of a few MiB: filled with a filler file, then given room again."""

    def __init__(self, mount_point: Path):
        self.mount_point = mount_point
        self.filler = mount_point / "filler"

    def fill(self) -> None:
        """Write until the file system refuses one more byte."""
        chunk = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as handle:
            for size in (65536, 4096, 1):
                try:
                    while True:
                        handle.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        assert os.statvfs(self.mount_point).f_bavail == 0

    def empty(self) -> None:
        self.filler.unlink()

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.mount_point)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_tmpfs(tmp_path / "disk", "8m") as mount_point:
        try:
            yield SmallDisk(mount_point)
        finally:
            kill_leftover_monitors(mount_point)


@pytest.fixture
def full_env(small_disk: SmallDisk) -> dict[str, str]:
    env = dict(os.environ)
    env["TRAINSUP_HOME"] = str(small_disk.mount_point / "state")
    env.pop("NOTIFY_SOCKET", None)
    return env


def test_submit_on_a_full_disk_fails_and_leaves_nothing_behind(small_disk: SmallDisk, full_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    cli = Cli(full_env)
    spec = write_spec(tmp_path / "job.yaml", name="job", command="true", checkpoint_dir=str(tmp_path / "ckpt"))
    first = cli.submit(spec)
    small_disk.fill()

    refused = cli.run("submit", str(spec), "--again", check=False)
    assert refused.returncode != 0
    assert "No space left on device" in refused.stderr
    inbox = Path(full_env["TRAINSUP_HOME"]) / "inbox"
    assert [p.name for p in inbox.iterdir() if p.name.startswith(".")] == [], "no temp file left in the inbox"
    assert "disk full" in cli.run("status").stderr

    small_disk.grow("16m")
    second = cli.submit(spec, "--again")
    assert len(list(inbox.iterdir())) == 2 and first != second


def test_daemon_rides_out_a_full_disk(small_disk: SmallDisk, full_env: dict[str, str], tmp_path: Path) -> None:
    cli = Cli(full_env)
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(full_env, log).start()
    try:
        go, mark = tmp_path / "go", tmp_path / "mark"
        # A runs until told to end; B crashes once and waits out a backoff while the disk is full.
        long_job = cli.submit(write_spec(
            tmp_path / "long.yaml", name="long", checkpoint_dir=str(tmp_path / "ckpt-long"),
            command=[sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"]))
        cli.wait_state(long_job, "running", timeout=20)
        flaky = cli.submit(write_spec(
            tmp_path / "flaky.yaml", name="flaky", checkpoint_dir=str(tmp_path / "ckpt-flaky"),
            command=f"test -e {mark} && exit 0; touch {mark}; exit 1",
            restart={"initial": "3s", "max": "3s", "jitter": 0, "crash_loop": 0}))
        cli.wait_state(flaky, "backoff", timeout=20)

        small_disk.fill()
        go.touch()  # A ends while nothing can be written: its monitor waits to record it
        wait_for(lambda: b"disk full" in log.read_bytes() or daemon.process.poll() is not None, 15, 0.1,
                 "the daemon to say disk full")
        assert daemon.process.poll() is None, log.read_text()[-1500:]
        status = cli.run("status")
        assert "disk full" in status.stderr
        assert cli.job(long_job)["state"] == "running", "A's end waits for space; it is not lost"
        assert cli.job(flaky)["state"] == "backoff" and len(cli.job(flaky)["attempts"]) == 1, "nothing new starts"
        doctor = {c["name"]: c for c in json.loads(cli.run("doctor", "--json", check=False).stdout)}
        assert doctor["disk_full"]["ok"] is False and "disk full" in doctor["disk_full"]["detail"]

        small_disk.empty()
        assert cli.wait_state(long_job, "succeeded", "failed", timeout=20)["state"] == "succeeded"
        assert cli.wait_state(flaky, "succeeded", "failed", timeout=20)["state"] == "succeeded"
        wait_for(lambda: b"disk space is back" in log.read_bytes(), 10, 0.1, "the daemon to carry on")
        assert "disk full" not in cli.run("status").stderr
        assert daemon.process.poll() is None
    finally:
        daemon.stop()

    store = Store.open_readonly(StateDir(Path(full_env["TRAINSUP_HOME"])).db)
    assert [a.reason for a in store.attempts(long_job)] == ["succeeded"]
    assert [e.kind for e in store.events(long_job)].count("attempt_ended") == 1
    assert [a.reason for a in store.attempts(flaky)] == ["crash", "succeeded"]
    store.close()


# --- the same, one step at a time, with the daemon's parts wired to fakes -------------------


def test_an_end_seen_while_the_disk_is_full_is_recorded_once_space_is_back(small_disk: SmallDisk) -> None:
    world = World.make(small_disk.mount_point)
    job = world.submit("ends")
    plan = world.start(job)
    world.job_started(plan)
    world.poll()
    world.job_ended(plan, exit_code=0)  # the monitor's record got out just before the disk filled
    small_disk.fill()
    with pytest.raises(sqlite3.OperationalError, match="full"):
        world.poll()
    assert job in world.attempts.live, "still watched, so that it is settled later"
    assert world.job(job).state is JobState.RUNNING

    small_disk.empty()
    world.poll()
    assert job not in world.attempts.live
    assert world.job(job).state is JobState.SUCCEEDED
    assert [a.reason for a in world.store.attempts(job)] == [EndReason.SUCCEEDED]
    assert world.events(job).count("attempt_ended") == 1


def test_a_launch_that_hits_a_full_disk_is_requeued_not_failed(tmp_path: Path) -> None:
    world = World.make(tmp_path)
    job = world.submit("launch")
    world.launcher.fail_with = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        world.start(job)
    assert world.job(job).state is JobState.STARTING and job in world.attempts.live

    world.launcher.fail_with = None
    world.poll()  # space is back: the attempt that never launched ends as interrupted
    assert world.job(job).state is JobState.QUEUED
    assert [a.reason for a in world.store.attempts(job)] == [EndReason.INTERRUPTED]
    assert world.start(job).number == 2
