"""One checkpoint save persisting in a background thread, at most one at a time."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class BackgroundSave(Generic[T]):
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, work: Callable[[], T]) -> None:
        if self._thread is not None:
            raise RuntimeError("a background save is already in flight")
        self._result, self._error = None, None

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # handed to the thread that waits
                self._error = exc

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
