"""What the daemon needs to know about a job's checkpoints: the newest one's name.

The trainer library owns the format; the daemon only compares names to see
whether an attempt made progress.
"""

from __future__ import annotations

import os

STEP_PREFIX = "step-"


def newest_checkpoint(checkpoint_dir: str) -> str | None:
    try:
        names = [n for n in os.listdir(checkpoint_dir) if n.startswith(STEP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return max(names, default=None)
