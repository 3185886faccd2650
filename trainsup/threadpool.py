"""`pool(name)`: a thread pool per purpose, made on first use and made again in a forked child.

A forked child inherits a pool object whose threads did not come with it; submitting to it
would wait forever. Python joins these threads at exit, so work handed to them finishes
unless the process is killed.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}
_owner = os.getpid()


def pool(name: str, workers: int = 1) -> ThreadPoolExecutor:
    """The pool named `name` of this process (threads `trainsup-<name>_<n>`)."""
    global _owner
    with _lock:
        if _owner != os.getpid():
            _pools.clear()
            _owner = os.getpid()
        found = _pools.get(name)
        if found is None:
            found = _pools[name] = _Pool(workers, thread_name_prefix=f"trainsup-{name}")
        return found


class _Pool(ThreadPoolExecutor):
    """A pool that runs the work in the calling thread when it cannot take it: once the
    interpreter is exiting, or when no thread can be started.

    A checkpoint save still in flight at exit (its thread is waited for then) must finish,
    but `concurrent.futures` refuses new work as soon as the interpreter starts to exit,
    before the exit hooks that wait for the save run. These pools are never shut down
    otherwise, so a refusal means one of those two."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            done: Future[T] = Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)
            return done
