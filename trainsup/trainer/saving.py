"""When a `Session` saves (`Saving`), and the save itself (`Saver`): in the loop's thread,
or snapshotted to CPU memory and persisted by a background thread."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import torch

from trainsup.trainer import statefile
from trainsup.trainer.background import BackgroundSave
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir
from trainsup.trainer.errors import CheckpointSaveError, OptionError
from trainsup.trainer.fsops import Writer
from trainsup.textlog import get_logger
from trainsup.trainer.statefile import STATE_FILE

log = get_logger()


@dataclass(frozen=True)
class Saving:
    """When to checkpoint: every N steps and/or T seconds (at a step boundary), at each
    epoch's end, and when the `with` block ends normally; `in_background` persists each
    save in a thread after a copy to CPU memory."""

    every_steps: int | None = None
    every_seconds: float | None = 600.0
    every_epoch: bool = True
    on_exit: bool = True
    in_background: bool = False

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise OptionError("Saving every_steps must be at least 1, or None to save on time and epochs only.")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise OptionError("Saving every_seconds must be more than 0, or None to save on steps and epochs only.")


class Saver:
    """Saves `state` into a `CheckpointDir` as `options` say; at most one save in flight.

    `dirty` is True while there is progress that no checkpoint holds yet.
    """

    def __init__(self, checkpoints: CheckpointDir, options: Saving) -> None:
        self.checkpoints = checkpoints
        self.options = options
        self.last: Checkpoint | None = None
        self.dirty = False
        self._last_save = time.monotonic()
        self._background: BackgroundSave[Checkpoint] = BackgroundSave()
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def restart_clock(self) -> None:
        self._last_save = time.monotonic()

    def due_after_step(self, step: int) -> bool:
        every_steps, every_seconds = self.options.every_steps, self.options.every_seconds
        return bool(every_steps and step % every_steps == 0) or (
            every_seconds is not None and time.monotonic() - self._last_save >= every_seconds
        )

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], *, wait: bool) -> Checkpoint | None:
        """Checkpoint `state` as `step`; in the background (returning None) unless `wait`.

        Raises:
            CheckpointSaveError: a save in this thread failed; the previous checkpoint is intact.
        """
        self.dirty = False
        self._last_save = time.monotonic()
        if self.options.in_background and not wait:
            state = statefile.snapshot(state, self._buffers)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # the non-blocking copies to pinned memory
            self._background.start(lambda: self._persist(step, state, meta))
            return None
        try:
            return self._persist(step, state, meta)
        except CheckpointSaveError:
            self.dirty = True
            raise

    def wait(self) -> Checkpoint | None:
        """Block until a background save is durable; return it (None if none was in flight).

        Raises:
            CheckpointSaveError: the background save failed.
        """
        try:
            return self._background.wait()
        except CheckpointSaveError:
            self.dirty = True
            raise

    def settle(self, raise_errors: bool = False) -> None:
        """Wait for a background save; a failure is logged (or raised with `raise_errors`)."""
        try:
            self.wait()
        except CheckpointSaveError as exc:
            if raise_errors:
                raise
            log.error("%s Training continues; the next save will try again.", exc)

    def _persist(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Checkpoint:
        started = time.monotonic()
        checkpoint = self.checkpoints.save(step, {STATE_FILE: state_writer(state)}, meta)
        size = sum(d.size for d in checkpoint.manifest.files.values())
        log.info("saved checkpoint %s (%.1f MB in %.2f s)", checkpoint.name, size / 1e6, time.monotonic() - started)
        self.last = checkpoint
        return checkpoint


def state_writer(state: dict[str, Any]) -> Writer:
    """`torch.save(state, file)` for a file of a checkpoint's manifest, without the CRC-32
    torch computes of every record (~0.6 s per GiB here, as much as the write itself):
    the manifest's digest covers every byte and is checked before every load, and
    `torch.load` reads the file the same (its reader does not check those CRCs)."""

    def write(file: BinaryIO) -> None:
        with _without_crc32():
            torch.save(state, file)

    return write


_crc32_lock = threading.Lock()
_crc32_off = 0
_crc32_before = True


@contextmanager
def _without_crc32() -> Iterator[None]:
    """torch's CRC-32 option off while any save here runs (the option is process-wide:
    a `torch.save` of the user's in another thread meanwhile also goes without it)."""
    global _crc32_off, _crc32_before
    setter = getattr(torch.serialization, "set_crc32_options", None)
    if setter is None:  # an older torch always computes them
        yield
        return
    with _crc32_lock:
        if _crc32_off == 0:
            _crc32_before = torch.serialization.get_crc32_options()
            setter(False)
        _crc32_off += 1
    try:
        yield
    finally:
        with _crc32_lock:
            _crc32_off -= 1
            if _crc32_off == 0:
                setter(_crc32_before)
