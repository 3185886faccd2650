"""Helpers for the end-to-end tests: the installed `trainsup` command, a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).parent
JOBS = TESTS / "jobs"
TRAINSUP = str(Path(sys.executable).parent / "trainsup")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cli:
    """Runs the installed `trainsup` command against one state dir."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([TRAINSUP, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"trainsup {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def submit(self, spec: Path, *extra: str) -> str:
        return self.json("submit", str(spec), *extra)["id"]

    def job(self, job: str) -> dict:
        return self.json("status", job)

    def wait_state(self, job: str, *states: str, timeout: float = 60) -> dict:
        return wait_for(lambda: (s := self.job(job))["state"] in states and s, timeout, 0.2, f"{job} in {states}")


class DaemonProcess:
    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "DaemonProcess":
        readies = self._count_ready()
        handle = open(self.log, "ab")
        self.process = subprocess.Popen([TRAINSUP, "daemon"], env=self.env, stdout=handle, stderr=handle)
        handle.close()
        wait_for(lambda: self._count_ready() > readies or self.process.poll() is not None,
                 30, what="daemon ready")
        assert self.process.poll() is None, self.log.read_text()
        return self

    def _count_ready(self) -> int:
        return self.log.read_bytes().count(b"daemon ready") if self.log.exists() else 0

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def write_spec(path: Path, **fields: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def kill_leftover_monitors(state_root: Path) -> None:
    """A failed test must not leave jobs running into the next one."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "trainsup.supervisor.monitor" in cmdline and str(state_root) in cmdline:
            for member in [*process.children(recursive=True), process]:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass


@contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "8m") mounted at `mount_point` (made here), unmounted after;
    the test is skipped where mounting is not allowed."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
