"""SIGTERM, SIGINT and SIGUSR1 ask for a checkpoint and exit 75 at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from trainsup.textlog import get_logger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """Handlers that only record the request; the loop acts on it at a safe point.

    Used by `Session` and by the framework adapters; `then` says in the log line what the
    loop will do about the first signal.
    """

    def __init__(self, then: str = "will checkpoint at the next step boundary and exit 75") -> None:
        self.requested: str | None = None
        self.then = then
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Record SIGTERM/SIGINT/SIGUSR1 from now on; a no-op when already installed."""
        if self._previous:
            return True
        if threading.current_thread() is not threading.main_thread():
            get_logger().warning("not in the main thread: SIGTERM/SIGINT/SIGUSR1 will not checkpoint before exit")
            return False
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self, *, only_ours: bool = False) -> None:
        """Put back the handlers found at `install`; with `only_ours`, not over one set since."""
        for signum, handler in self._previous.items():
            if not only_ours or signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            get_logger().info("%s received: %s", name, self.then)
        else:
            get_logger().info("%s received again: still finishing the checkpoint", name)
