"""One checkpoint save persisting in a background thread, at most one at a time."""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from typing import Callable, Generic, TypeVar

from trainsup.textlog import get_logger

T = TypeVar("T")

_in_flight: "weakref.WeakSet[BackgroundSave[object]]" = weakref.WeakSet()


class BackgroundSave(Generic[T]):
    """Runs one piece of work at a time in a thread kept for the next one.

    Starting a thread per save stalled the loop by milliseconds (`Thread.start()` waits
    for the new thread to be scheduled and to take the GIL; on a loaded machine that is
    the whole stall), so the thread is started once and handed work through a queue. It
    is a daemon thread; a process that exits still finishes a save in flight (waited for
    at exit, see `_finish_in_flight`).
    """

    def __init__(self, name: str = "trainsup-checkpoint") -> None:
        self.name = name
        self._worker: threading.Thread | None = None
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._busy = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self.finished_at: float | None = None  # time.monotonic() when the last one ended

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def done(self) -> bool:
        """The work in flight has ended (`wait` returns at once); True when there is none."""
        return self._idle.is_set()

    def start(self, work: Callable[[], T]) -> None:
        if self._busy:
            raise RuntimeError("a background save is already in flight")
        self._result, self._error, self.finished_at = None, None, None

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # handed to the thread that waits
                self._error = exc
            finally:
                self.finished_at = time.monotonic()

        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._worker.start()
        self._busy = True
        self._idle.clear()
        _in_flight.add(self)  # type: ignore[arg-type]
        self._work.put(run)

    def wait(self) -> T | None:
        """The finished work's result (None if none was in flight); re-raises its error."""
        if not self._busy:
            return None
        self._idle.wait()
        self._busy = False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result

    def close(self) -> None:
        """Let the thread end once the work in flight is done."""
        if self._worker is not None:
            self._work.put(None)
            self._worker = None

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                work()
            finally:
                self._idle.set()


@atexit.register
def _finish_in_flight() -> None:
    """At interpreter exit (daemon threads still run then): wait for every save in flight,
    and say so if one failed (nobody is left to `wait` for it)."""
    for background in list(_in_flight):
        background._idle.wait()
        if background.busy and background._error is not None:
            get_logger().error("%s (the process was exiting)", background._error)
