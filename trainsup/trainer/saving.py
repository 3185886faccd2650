"""When a `Session` saves (`Saving`), and the save itself (`Saver`): in the loop's thread,
or copied to CPU memory and persisted by a background thread (`trainsup.trainer.deferred`
says which part of the copy is left to that thread)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import torch

from trainsup.trainer import openmp, statefile
from trainsup.trainer.background import BackgroundSave
from trainsup.trainer.deferred import DeferredCopy, Pending, owned_storages
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir
from trainsup.trainer.errors import CheckpointSaveError, OptionError
from trainsup.trainer.fsops import Writer
from trainsup.textlog import get_logger
from trainsup.trainer.statefile import STATE_FILE

log = get_logger()


@dataclass(frozen=True)
class Saving:
    """When to checkpoint: every N steps and/or T seconds (at a step boundary), at each
    epoch's end, and when the `with` block ends normally.

    `in_background`: `save()` returns after copying the state the optimizer does not own;
    a thread copies the optimizer's parameters and state (the optimizer's next step waits
    for that copy, see `trainsup.trainer.deferred`) and persists the checkpoint, with one
    of torch's threads lent to it until it is durable (`torch.set_num_threads(n - 1)` in
    the loop's thread, restored at the first step boundary after).
    """

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

    def __init__(self, checkpoints: CheckpointDir, options: Saving, optimizer: Any = None, *,
                 release_openmp_workers: bool = True) -> None:
        self.checkpoints = checkpoints
        self.options = options
        self._release_openmp_workers = release_openmp_workers  # see `_lend_a_thread`
        self.last: Checkpoint | None = None
        self.dirty = False
        self.waited_s = 0.0  # how long the loop's thread waited for background copies, in all
        self._last_save = time.monotonic()
        self._background: BackgroundSave[Checkpoint] = BackgroundSave()
        self._copier: BackgroundSave[None] = BackgroundSave("trainsup-checkpoint-copy")
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._optimizer = optimizer if callable(getattr(optimizer, "register_step_pre_hook", None)) else None
        self._hook: Any = None
        self._copy: DeferredCopy | None = None
        self._lent_from: int | None = None  # torch's thread count before one was lent to the save
        # The loop changed the optimizer's tensors outside its step during a save: from then
        # on every background save copies the whole state at save() (a longer stall, no failure).
        self._copy_at_save = False

    @property
    def in_flight(self) -> bool:
        """A background save has started and `wait` has not collected it yet."""
        return self._background.busy

    def attach(self) -> None:
        """Hook the optimizer's step (background saves only): it waits for a copy in flight."""
        if self.options.in_background and self._optimizer is not None and self._hook is None:
            self._hook = self._optimizer.register_step_pre_hook(lambda *_: self.before_optimizer_step())
        if self.options.in_background and self._release_openmp_workers:
            openmp.find_runtime()  # now, not in the first save's stall

    def detach(self) -> None:
        """Unhook the optimizer and let the threads end (after `settle`)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._background.close()
        self._copier.close()

    def before_optimizer_step(self) -> None:
        """The optimizer is about to change its tensors: let the copy in flight finish first."""
        self.waited_s += self._release_copy()
        self.poll()

    def _release_copy(self) -> float:
        """Wait for the copy in flight, if any; the seconds waited."""
        if self._copy is None:
            return 0.0
        waited = self._copy.release()
        self._copier.wait()
        self._note_if_changed(self._copy)
        self._copy = None
        return waited

    def _note_if_changed(self, copy: DeferredCopy) -> None:
        if copy.changed and not self._copy_at_save:
            self._copy_at_save = True
            log.warning("A parameter or optimizer state was changed in place outside optimizer.step() while a "
                        "background save copied it: that save fails (the previous checkpoint stays), and the "
                        "following background saves copy the whole state when save() is called, a longer stall.")

    def poll(self) -> None:
        """At a step boundary: give back the thread lent to a background save that ended."""
        if self._lent_from is not None and self._background.done:
            self._restore_threads()

    def _restore_threads(self) -> None:
        if self._lent_from is not None:
            torch.set_num_threads(self._lent_from)
            self._lent_from = None

    def restart_clock(self) -> None:
        self._last_save = time.monotonic()

    def due_after_step(self, step: int) -> bool:
        every_steps, every_seconds = self.options.every_steps, self.options.every_seconds
        return bool(every_steps and step % every_steps == 0) or (
            every_seconds is not None and time.monotonic() - self._last_save >= every_seconds
        )

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], *, wait: bool,
             fresh: frozenset[str] = frozenset()) -> Checkpoint | None:
        """Checkpoint `state` as `step`; in the background (returning None) unless `wait`.

        `fresh`: keys of `state` whose values were made for this save (progress, RNG
        states) and are held by nothing else, so a background save need not copy them.

        Raises:
            CheckpointSaveError: a save in this thread failed; the previous checkpoint is intact.
        """
        self.dirty = False
        self._last_save = time.monotonic()
        if self.options.in_background and not wait:
            pending: Pending = []
            defer = owned_storages(self._optimizer) if self._hook is not None and not self._copy_at_save else None
            state = {key: value if key in fresh else
                     statefile.snapshot(value, self._buffers, (key,), defer=defer, pending=pending)
                     for key, value in state.items()}
            on_gpu = torch.cuda.is_initialized()
            if on_gpu:
                torch.cuda.synchronize()  # the non-blocking copies to pinned memory
            copy = DeferredCopy(pending) if pending else None
            self._lend_a_thread(on_gpu)
            self._copy = copy

            try:
                self._background.start(lambda: self._copy_and_persist(step, state, meta, copy))
            except BaseException:
                if copy is not None:
                    copy.cancel()  # never started: nothing will copy it
                self._release_copy()
                self._restore_threads()
                raise
            return None
        try:
            return self._persist(step, state, meta)
        except CheckpointSaveError:
            self.dirty = True
            raise

    def _lend_a_thread(self, on_gpu: bool) -> None:
        """One of torch's threads to the writer until the save is durable (see `poll`)."""
        threads = torch.get_num_threads()
        if threads <= 1:
            return
        torch.set_num_threads(threads - 1)
        self._lent_from = threads
        if self._release_openmp_workers and not on_gpu and threads >= openmp.usable_cpus():
            # A CPU loop with a torch thread on every core: OpenMP's workers spin on them
            # for ~3 ms after the step, and the writer would wait that long for a core.
            openmp.release_idle_workers()

    def wait(self) -> Checkpoint | None:
        """Block until a background save is durable; return it (None if none was in flight).

        Raises:
            CheckpointSaveError: the background save failed.
        """
        try:
            self._release_copy()
            return self._background.wait()
        except CheckpointSaveError:
            self.dirty = True
            raise
        finally:
            self._restore_threads()

    def settle(self, raise_errors: bool = False) -> None:
        """Wait for a background save; a failure is logged (or raised with `raise_errors`)."""
        try:
            self.wait()
        except CheckpointSaveError as exc:
            if raise_errors:
                raise
            log.error("%s Training continues; the next save will try again.", exc)

    def _copy_and_persist(self, step: int, state: dict[str, Any], meta: dict[str, Any],
                          copy: DeferredCopy | None) -> Checkpoint:
        """In the writer's thread: copy a small state here first; start the copy's thread
        for a big one (from here, not `save()`: one thread hand-off less in the loop's
        stall) and persist while it copies."""
        if copy is not None:
            if copy.nbytes <= _COPY_IN_WRITER_UP_TO:
                copy.run()
            else:
                try:
                    self._copier.start(copy.run)
                except RuntimeError:  # no thread to be had: copy here, then write
                    copy.run()
        return self._persist(step, state, meta, copy)

    def _persist(self, step: int, state: dict[str, Any], meta: dict[str, Any],
                 copy: DeferredCopy | None = None) -> Checkpoint:
        started = time.monotonic()
        writer = state_writer(state) if copy is None else _checked(state_writer(state), copy)
        checkpoint = self.checkpoints.save(step, {STATE_FILE: writer}, meta)
        size = sum(d.size for d in checkpoint.manifest.files.values())
        log.info("saved checkpoint %s (%.1f MB in %.2f s)", checkpoint.name, size / 1e6, time.monotonic() - started)
        self.last = checkpoint
        return checkpoint


# A copy this small takes ~1-3 ms: waking a second thread for it costs as much on 2 busy
# cores, while a bigger one is worth overlapping with the writing (1 GB: ~0.4 s of copy).
_COPY_IN_WRITER_UP_TO = 64 << 20


def _checked(writer: Writer, copy: DeferredCopy) -> Writer:
    """`writer` into a file that lets through the bytes of a copy only once they are
    copied, then a check that `copy` holds the state as it was at `save()` (before the commit)."""

    class Gated:
        def __init__(self, file: BinaryIO) -> None:
            self._file = file

        def write(self, data: Any) -> int:
            copy.gate(data)
            return self._file.write(data)

        def flush(self) -> None:
            self._file.flush()

    def write(file: BinaryIO) -> None:
        writer(Gated(file))  # type: ignore[arg-type]
        copy.check_unchanged()

    return write


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
