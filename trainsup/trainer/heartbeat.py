"""`<TRAINSUP_HEARTBEAT>/rank-<n>.json`, rewritten at most 4 times a second."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

import torch

from trainsup.trainer.log import get_logger

Phase = Literal["train", "eval", "checkpoint", "start"]


class Heartbeat:
    def __init__(self, directory: Path | None, rank: int = 0, min_interval: float = 0.25) -> None:
        self.min_interval = min_interval
        self._path = directory / f"rank-{rank}.json" if directory else None
        self._temp = directory / f".rank-{rank}.json.tmp-{os.getpid()}" if directory else None
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._failed = False
        if directory:
            directory.mkdir(parents=True, exist_ok=True)

    def due(self) -> bool:
        """Cheap: whether a non-forced beat would be written now."""
        return self._path is not None and time.monotonic() - self._last >= self.min_interval

    def beat(self, *, step: int, epoch: int, phase: Phase, loss: float | None = None,
             samples_per_s: float | None = None, max_memory_bytes: int | None = None, force: bool = False,
             total_steps: int | None = None) -> bool:
        if self._path is None or self._temp is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        payload = {
            "time": time.time(), "step": step, "epoch": epoch, "phase": phase, "loss": loss,
            "samples_per_s": samples_per_s, "max_memory_bytes": max_memory_bytes, "pid": os.getpid(),
            "total_steps": total_steps,
        }
        with self._lock:
            self._last = now
            try:
                self._temp.write_text(json.dumps(payload))
                os.replace(self._temp, self._path)
            except OSError as exc:
                if not self._failed:
                    get_logger().warning("cannot write heartbeat %s: %s", self._path, exc.strerror)
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
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
