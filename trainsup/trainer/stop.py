"""SIGTERM, SIGINT and SIGUSR1 ask for a checkpoint and exit 75 at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from trainsup.trainer.log import get_logger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """Handlers that only record the request; the loop acts on it at a safe point."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            get_logger().warning("not in the main thread: SIGTERM/SIGINT/SIGUSR1 will not checkpoint before exit")
            return False
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            get_logger().info("%s received: will checkpoint at the next step boundary and exit 75", name)
        else:
            get_logger().info("%s received again: still finishing the checkpoint", name)
