"""SIGUSR2 dumps every thread's stack to stderr, for the daemon to debug a hung job."""

from __future__ import annotations

import faulthandler
import signal
import sys


def register_stack_dumps() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.register(signal.SIGUSR2, file=stream, all_threads=True, chain=False)
            return
        except (AttributeError, ValueError, OSError):  # a stream without a file descriptor
            continue
