"""`save_file(obj, path)`: a power-safe `torch.save` for scripts that keep their own files.

    torch.save(state, "checkpoints/last_model.pth")        # a kill mid-write leaves a torn file
    trainer.save_file(state, "checkpoints/last_model.pth")  # the old file or the new one, never neither

The object goes into a hidden temp file beside `path` (`.last_model.pth.tmp-<pid>-<hex>`),
which is fsynced and renamed over `path`; then the directory is fsynced. A crash or power
cut at any instant leaves `path` holding the previous object or the new one, complete; once
`save_file` returned, the new one survives a power cut. Every step goes through a
`FileOps`, the seam the crash tests inject faults into.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from trainsup.trainer.errors import CheckpointSaveError
from trainsup.trainer.fsops import FileOps
from trainsup.textlog import get_logger

_TEMP_MARK = ".tmp-"


def save_file(obj: Any, path: str | os.PathLike[str], *, ops: FileOps | None = None) -> Path:
    """`torch.save(obj, path)`, made atomic and durable: temp file, fsync, rename, fsync the dir.

    Temp files that an earlier, interrupted `save_file` of the same `path` left behind are
    removed first. Returns `path` as a `Path`.

    Raises:
        CheckpointSaveError: the save failed (disk full, I/O error, an object torch cannot
            save); `path` still holds what it held before and the temp file is removed.
    """
    path = Path(path)
    ops = ops or FileOps()
    _remove_stale_temps(path, ops)
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        ops.write_file(temp, lambda file: torch.save(obj, file))
        ops.fsync_file(temp)
        ops.rename(temp, path)
        ops.fsync_dir(path.parent)
    except Exception as exc:
        _discard(temp, ops)
        before = "the previous file is intact" if path.exists() else "there was no file before"
        raise CheckpointSaveError(f"Saving {path} failed ({_describe(exc)}); {before}.") from exc
    return path


def _remove_stale_temps(path: Path, ops: FileOps) -> None:
    prefix = f".{path.name}{_TEMP_MARK}"
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return  # the write below says so in one sentence
    for name in names:
        if name.startswith(prefix):
            get_logger().info("removing %s left by an interrupted save", name)
            _discard(path.parent / name, ops)


def _discard(temp: Path, ops: FileOps) -> None:
    try:
        if os.path.lexists(temp):
            ops.remove_file(temp)
    except Exception as exc:  # best effort: the next save_file of this path removes it
        get_logger().warning("could not remove %s: %s", temp, exc)


def _describe(exc: BaseException) -> str:
    """The OS error underneath (torch wraps a failed write in a RuntimeError), else the error's first line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:200]}" if lines else exc.__class__.__name__
