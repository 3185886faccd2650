"""The logger of code that runs inside a training process (the trainer library, the
framework adapters): one line per event on stderr, where the job log is. Stdlib only;
the daemon logs through structlog instead (`logconfig.py`).
"""

from __future__ import annotations

import logging
import sys


def get_logger(name: str = "trainsup.trainer") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s trainsup %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
