"""`<TRAINSUP_HEARTBEAT>/rank-<n>.json`, rewritten at most 4 times a second.

The record and its file are `trainsup.contracts.Heartbeat` / `write_heartbeat`; this
module decides when to write one and turns a failing write into one warning.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from trainsup.contracts import Heartbeat, Phase, write_heartbeat
from trainsup.textlog import get_logger


class HeartbeatWriter:
    """Writes this rank's heartbeat, rate-limited; a no-op when `directory` is None."""

    def __init__(self, directory: Path | None, rank: int = 0, min_interval: float = 0.25) -> None:
        self.directory = directory
        self.rank = rank
        self.min_interval = min_interval
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._failed = False

    def due(self) -> bool:
        """Cheap: whether a non-forced beat would be written now."""
        return self.directory is not None and time.monotonic() - self._last >= self.min_interval

    def beat(self, *, step: int, epoch: int, phase: Phase, loss: float | None = None,
             samples_per_s: float | None = None, max_memory_bytes: int | None = None, force: bool = False,
             total_steps: int | None = None) -> bool:
        """Write a beat unless the last one is younger than `min_interval` (and not `force`)."""
        if self.directory is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        record = Heartbeat(rank=self.rank, time=time.time(), step=step, epoch=epoch, phase=phase, pid=os.getpid(),
                           loss=loss, samples_per_s=samples_per_s, max_memory_bytes=max_memory_bytes,
                           total_steps=total_steps)
        with self._lock:
            self._last = now
            try:
                write_heartbeat(self.directory, record)
            except OSError as exc:
                if not self._failed:
                    get_logger().warning("cannot write heartbeat in %s: %s", self.directory, exc.strerror or exc)
                    self._failed = True
                return False
        return True


class SampleRate:
    """Samples per second between successive readings."""

    def __init__(self) -> None:
        self._mark = (time.monotonic(), 0)

    def read(self, seen: int) -> float | None:
        now = time.monotonic()
        then, samples = self._mark
        self._mark = (now, seen)
        return (seen - samples) / (now - then) if now > then and seen > samples else None


def max_memory_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
