"""`pool(name)`: a thread pool per purpose, made on first use and made again in a forked child.

A forked child inherits a pool object whose threads did not come with it; submitting to it
would wait forever. Python joins these threads at exit, so work handed to them finishes
unless the process is killed.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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
            found = _pools[name] = ThreadPoolExecutor(workers, thread_name_prefix=f"trainsup-{name}")
        return found
