"""sd_notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from trainsup.contracts import clean_child_env
from trainsup.supervisor.notify import SystemdNotifier


class Listener:
    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(2)
        return True


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        env_value = str(path)
    else:
        name = f"trainsup-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    yield Listener(sock, env_value)
    sock.close()


def notifier_for(listener: Listener, **extra: str) -> SystemdNotifier:
    return SystemdNotifier.from_env({"NOTIFY_SOCKET": listener.env_value, **extra})


def test_messages_arrive_as_exact_datagrams(listener: Listener) -> None:
    notifier = notifier_for(listener)
    assert notifier.enabled

    assert notifier.ready()
    assert listener.recv() == "READY=1"
    notifier.ready("2 running, 1 queued")
    assert listener.recv() == "READY=1\nSTATUS=2 running, 1 queued"
    notifier.status("line one\nline two")
    assert listener.recv() == "STATUS=line one line two"
    notifier.stopping()
    assert listener.recv() == "STOPPING=1"
    notifier.extend_timeout(90.5)
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=90500000"
    notifier.reloading()
    first, second = listener.recv().split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=") and int(second.split("=")[1]) > 0
    notifier.close()


def test_watchdog_pings_when_asked_for_this_pid(listener: Listener) -> None:
    notifier = notifier_for(listener, WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval == 30.0
    assert notifier.watchdog()
    assert listener.recv() == "WATCHDOG=1"


def test_watchdog_without_pid_applies_to_us(listener: Listener) -> None:
    notifier = notifier_for(listener, WATCHDOG_USEC="1000000")
    assert notifier.watchdog_interval == 0.5


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"},  # meant for another process
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {},
    ],
)
def test_watchdog_off(listener: Listener, extra: dict[str, str]) -> None:
    notifier = notifier_for(listener, **extra)
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    assert not listener.pending()


def test_everything_is_a_noop_without_notify_socket() -> None:
    notifier = SystemdNotifier.from_env({"WATCHDOG_USEC": "60000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert not notifier.extend_timeout(10)


def test_unsupported_socket_kind_disables() -> None:
    assert not SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_error_is_swallowed_and_warned_once(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.status("still no one listening")
    assert [(e["event"], e["log_level"]) for e in logs] == [("sd_notify_failed", "warning")]


def test_clean_child_env_removes_only_the_notify_variables() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "2",
        "PATH": "/usr/bin",
        "TRAINSUP_JOB_ID": "j1",
    }
    cleaned = clean_child_env(env)
    assert cleaned == {"PATH": "/usr/bin", "TRAINSUP_JOB_ID": "j1"}
    assert "NOTIFY_SOCKET" in env  # the input is left alone
