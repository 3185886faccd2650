"""How a training process ends: `$TRAINSUP_RUN_DIR/exit.json` and OOM recognition."""

from __future__ import annotations

from pathlib import Path

import torch

from trainsup.contracts import EXIT_FILE, ExitReason, TrainerExit
from trainsup.durable import write_json_atomic
from trainsup.trainer.log import get_logger

_OOM_PHRASES = ("out of memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (MemoryError, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


def write_exit_info(run_dir: Path | None, reason: ExitReason, step: int, detail: str) -> None:
    if run_dir is None:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / EXIT_FILE, TrainerExit(reason, step, detail).to_json())
    except OSError as exc:
        get_logger().warning("cannot write %s/%s: %s", run_dir, EXIT_FILE, exc.strerror)


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{exc.__class__.__name__}: {text}"[:500]
