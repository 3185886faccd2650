"""The real daemon talking sd_notify to a socket the test holds, as systemd would.

READY=1 only after recovery and intake, STATUS= with counts, WATCHDOG=1 within
WatchdogSec, STOPPING=1 and EXTEND_TIMEOUT_USEC on SIGTERM, and none of the unit's
notify variables in a job's environment.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable
WATCHDOG_USEC = 2_000_000
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS = re.compile(r"STATUS=(\d+) running, (\d+) waiting")


class NotifySocket:
    """An AF_UNIX datagram socket collecting (arrival time, message) pairs."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tsn-")  # short: sun_path holds 107 bytes
        self.path = str(Path(self.dir) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            with self.lock:
                self.messages.append((time.time(), data.decode()))

    def received(self) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.messages)

    def first(self, line: str, after: float = 0.0) -> tuple[float, str] | None:
        return next(((t, m) for t, m in self.received() if t >= after and line in m.splitlines()), None)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def _env_of(cli: Cli, job: str) -> dict[str, str]:
    lines = cli.run("logs", job).stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(" "))


def test_notify_protocol_end_to_end(cli: Cli, daemon: DaemonProcess, state_env, tmp_path: Path, notify_socket):
    long_job = [PY, str(JOBS / "resumable.py"), "--steps", "100000", "--interval", "0.05", "--print-env"]
    # A previous daemon leaves a running attempt behind: the next one must re-adopt it first.
    cli.run("group", "set", "default", "3")  # the three CPU jobs at once, beyond the default limit
    daemon.start()
    adopted = cli.submit(write_spec(tmp_path / "a.yaml", name="adopted", command=long_job,
                                    checkpoint_dir="ckpt-a", grace_period="20s"))
    wait_for(lambda: "step 1\n" in cli.run("logs", adopted).stdout, 60, 0.2, "the first job to run")
    daemon.kill9()

    # Submitted while the daemon is down, from a shell that itself runs under systemd.
    cli.env = {**state_env, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}
    fresh = cli.submit(write_spec(tmp_path / "b.yaml", name="fresh", command=long_job,
                                  checkpoint_dir="ckpt-b", grace_period="20s"))
    waiting = cli.submit(write_spec(tmp_path / "c.yaml", name="waiting", command="exit 1",
                                    restart={"initial": "1h", "max": "1h", "jitter": 0}))
    cli.env = state_env

    daemon.env = {**state_env, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon.env.pop("WATCHDOG_PID", None)
    daemon.start()
    ready_at, ready = wait_for(lambda: notify_socket.first("READY=1"), 30, 0.05, "READY=1")

    # READY=1 came after recovery and after the inbox was taken in.
    events = cli.json("show", adopted)["events"]
    adoption = next(e for e in events if e["kind"] == "adopted")
    assert adoption["at"] <= ready_at
    assert cli.job(fresh)["attempts"][0]["started_at"] <= ready_at, "the submission was ingested and started first"
    assert STATUS.search(ready), ready

    # STATUS= follows the counts: two running, one waiting in backoff.
    wait_for(lambda: any((m := STATUS.search(msg)) and m.groups() == ("2", "1") for _, msg in notify_socket.received()),
             30, 0.1, "STATUS=2 running, 1 waiting")
    assert cli.job(waiting)["state"] == "backoff"

    # The daemon's own notify variables reach neither the monitor nor the job.
    fresh_status = cli.wait_state(fresh, "running")
    monitor = psutil.Process(fresh_status["pid"]).parent()
    assert "trainsup.supervisor.monitor" in monitor.cmdline()
    assert not set(NOTIFY_VARIABLES) & set(monitor.environ()), monitor.environ()
    wait_for(lambda: "TRAINSUP_JOB_ID" in _env_of(cli, fresh), 30, 0.2, "the job's environment in its log")
    for job in (adopted, fresh):
        env = _env_of(cli, job)
        assert env["TRAINSUP_JOB_ID"] == job
        assert not set(NOTIFY_VARIABLES) & set(env), {k: env[k] for k in NOTIFY_VARIABLES if k in env}

    # Keep-alive pings while idle, within WatchdogSec (WATCHDOG_USEC/2 is the target).
    time.sleep(max(0.0, ready_at + 4.0 - time.time()))
    stop_at = time.time()
    assert daemon.stop(timeout=60) == 0

    pings = [t for t, m in notify_socket.received() if "WATCHDOG=1" in m.splitlines() and ready_at <= t <= stop_at]
    assert len(pings) >= 3, pings
    gaps = [b - a for a, b in zip([ready_at, *pings], [*pings, stop_at])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a WATCHDOG=1 gap exceeded WatchdogSec: {gaps}"

    stopping = notify_socket.first("STOPPING=1", after=stop_at)
    assert stopping is not None
    extend = next(((t, m) for t, m in notify_socket.received() if t >= stopping[0] and "EXTEND_TIMEOUT_USEC=" in m), None)
    assert extend is not None, notify_socket.received()[-5:]
    usec = int(re.search(r"EXTEND_TIMEOUT_USEC=(\d+)", extend[1]).group(1))
    assert usec >= 20_000_000, "covers the longest grace period of a running job"
    assert sum("READY=1" in m.splitlines() for _, m in notify_socket.received()) == 1
    assert not any("STOPPING=1" in m.splitlines() for t, m in notify_socket.received() if t < stop_at)

    for job in (adopted, fresh):
        status = cli.job(job)
        assert status["state"] == "queued", status
        assert status["attempts"][-1]["exit_code"] == 75
