"""How a training process ends: `$TRAINSUP_RUN_DIR/exit.json` and OOM recognition.

Reasons (`trainsup.contracts.ExitReason`): "finished" when the `with Session` block ends
normally, "preempted" after the checkpoint a stop request asked for (exit 75), "oom",
"error" (a restart may help) and "config_error" (no restart can fix it: the error's class
says `restartable = False`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

import torch

from trainsup.contracts import ENV_RUN_DIR, EXIT_FILE, ExitReason, TrainerExit
from trainsup.durable import write_json_atomic
from trainsup.errors import TrainsupError
from trainsup.trainer.errors import is_restartable
from trainsup.textlog import get_logger

_OOM_PHRASES = ("out of memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (MemoryError, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


def write_exit_info(run_dir: Path | None, reason: ExitReason, step: int | None, detail: str) -> None:
    if run_dir is None:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / EXIT_FILE, TrainerExit(reason, step, detail).to_json())
    except OSError as exc:
        get_logger().warning("cannot write %s/%s: %s", run_dir, EXIT_FILE, exc.strerror)


def exit_for_error(run_dir: Path | None, exc: BaseException, step: int | None) -> None:
    """A trainsup error ends the run: exit.json ("error", or "config_error" when no restart
    can fix it) and `error: <sentence>` on stderr. The caller exits 1."""
    reason: ExitReason = "error" if is_restartable(exc) else "config_error"
    write_exit_info(run_dir, reason, step, str(exc))
    print(f"error: {exc}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{exc.__class__.__name__}: {text}"[:500]


def install_excepthook() -> None:
    """Make a trainsup error that escapes the script outside a session (an impossible
    `Saving(...)`, a bad `TRAINSUP_BATCH_SIZE` read by `Batch.from_env`, no checkpoint
    dir) end like one inside it: one sentence on stderr and exit.json. Other exceptions
    go to the hook that was there before. Installed once, on `import trainsup.trainer`."""
    previous = sys.excepthook
    if getattr(previous, "_trainsup", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, TrainsupError):
            previous(kind, exc, tb)
            return
        run_dir = os.environ.get(ENV_RUN_DIR)
        exit_for_error(Path(run_dir) if run_dir else None, exc, None)

    hook._trainsup = True  # type: ignore[attr-defined]
    sys.excepthook = hook
