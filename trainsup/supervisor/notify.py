"""sd_notify(3) client: tell systemd we are ready, alive, busy or stopping.

Stdlib only (plus structlog for the one warning). The protocol is one datagram of
newline-separated `KEY=value` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET; a leading `@` names a socket in the abstract namespace. Without
$NOTIFY_SOCKET (not started by systemd, or `Type=simple`) every method is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


def _log():
    import structlog

    return structlog.get_logger(__name__)


_SEND_TIMEOUT_S = 1.0


@dataclass(eq=False)
class SystemdNotifier:
    """Sends sd_notify messages; never raises on a failed send.

    `address` is what `socket.sendto` takes (a path, or a str starting with NUL
    for an abstract socket); None disables everything. `watchdog_usec` is set
    only when systemd asked *this* process for keep-alive pings.
    """

    address: str | None = None
    watchdog_usec: int | None = None
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "SystemdNotifier":
        return cls(
            address=_socket_address(environ.get("NOTIFY_SOCKET", "")),
            watchdog_usec=_watchdog_usec(environ, os.getpid()),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify("\n".join(lines))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        if self.watchdog_interval is None:
            return False
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Move the running start/stop timeout to `seconds` from now.

        It is not added to the timeout: send it again before it runs out while
        a slow shutdown (jobs checkpointing) or a slow recovery goes on.
        """
        usec = max(0, int(seconds * 1_000_000))
        return self.notify(f"EXTEND_TIMEOUT_USEC={usec}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def notify(self, message: str) -> bool:
        """Send one raw datagram; True if it left, False if disabled or failed."""
        if self.address is None:
            return False
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _log().warning("sd_notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Empty, or a transport we do not speak (e.g. `vsock:`, systemd >= 253).
    if value:
        _log().warning("sd_notify_unsupported_socket", socket=value)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
