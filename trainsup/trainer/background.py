"""One checkpoint save persisting in a background thread, at most one at a time."""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class BackgroundSave(Generic[T]):
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: T | None = None
        self._error: BaseException | None = None
        self.finished_at: float | None = None  # time.monotonic() when the last one ended

    @property
    def busy(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        """The save in flight has ended (`wait` returns at once); True when there is none."""
        return self._thread is None or not self._thread.is_alive()

    def start(self, work: Callable[[], T]) -> None:
        if self._thread is not None:
            raise RuntimeError("a background save is already in flight")
        self._result, self._error, self.finished_at = None, None, None

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # handed to the thread that waits
                self._error = exc
            finally:
                self.finished_at = time.monotonic()

        # Not a daemon thread: a process that exits still finishes a durable save.
        self._thread = threading.Thread(target=run, name="trainsup-checkpoint")
        self._thread.start()

    def wait(self) -> T | None:
        """The finished save's result (None if none was in flight); re-raises its error."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result
