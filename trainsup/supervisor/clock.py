"""The time seam: the daemon reads the clock only through a `Clock`, so tests can set it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (stored times, heartbeat times)."""

    def monotonic(self) -> float:
        """Seconds for intervals (timeouts, deadlines)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
