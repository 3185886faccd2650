"""The copy behind a background save, made while the loop runs its next forward and backward.

A background save (`Saving(in_background=True)`) holds the state as it was when `save()`
was called. Copying all of it to CPU memory before `save()` returns stalled the loop about
as long as a whole synchronous save. Between two optimizer steps, though, the parameters
the optimizer owns and its own state (momenta, step counts) change only in
`optimizer.step()`. So `save()` copies everything else at once (buffers such as BatchNorm
statistics change in forward; the scheduler's and RNG states are small), and leaves the
optimizer's tensors (on the CPU) to a thread; a pre-step hook on the optimizer makes its
next step wait until they are copied. The save's writer starts at once and waits only for
the copy of the tensor it is about to write, so copying overlaps writing.

The contract this adds: until the optimizer's next step, change its parameters and state
only through it, or call `session.wait_for_save()` first. A change through PyTorch
(`p.add_()` under `no_grad`, `load_state_dict`) bumps the tensor's version counter, which
is checked after each tensor is copied, when the optimizer's next step comes and, if it
has not come yet, once the state file is written, before the checkpoint is committed: the
save then fails (the previous checkpoint is intact) instead of holding a mixed state, and
the session's later background saves copy everything at `save()` (`saving.Saver`).
A write that bypasses the counter (`p.data`, a NumPy view of the tensor) is not seen.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from typing import Any

import numpy as np
import torch

from trainsup.trainer.errors import LoopUsageError

Pending = list[tuple[torch.Tensor, torch.Tensor, int]]  # (live tensor, its copy, its version at save())


def owned_storages(optimizer: Any) -> set[int]:
    """The storages (by address) of the CPU tensors that only `optimizer.step()` changes:
    its parameters and its per-parameter state."""
    owned: set[int] = set()
    if optimizer is None:
        return owned
    tensors: list[torch.Tensor] = [p for group in optimizer.param_groups for p in group["params"]]
    for per_param in optimizer.state.values():
        tensors.extend(v for v in per_param.values() if isinstance(v, torch.Tensor))
    for tensor in tensors:
        if tensor.device.type == "cpu" and tensor.layout == torch.strided:
            address = tensor.untyped_storage().data_ptr()
            if address:
                owned.add(address)
    return owned


class DeferredCopy:
    """Copies `pending` (filled by `statefile.snapshot`) in a thread of its own; the loop's
    thread waits for it only before the optimizer's next step (`release`), and the save's
    writer only for the copy of each tensor it is about to write (`gate`), so the copy
    overlaps the writing of what is copied."""

    def __init__(self, pending: Pending) -> None:
        self._pending = pending
        self._copied = threading.Event()
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._done = 0  # pending[:done] are copied
        self._failed = False
        self._released = False  # the optimizer may change the tensors again
        self._changed = False
        if not pending:
            self._copied.set()

    @property
    def nbytes(self) -> int:
        """The bytes to copy."""
        return sum(copy.numel() * copy.element_size() for _, copy, _ in self._pending)

    @property
    def copied(self) -> bool:
        return self._copied.is_set()

    @property
    def changed(self) -> bool:
        """A tensor was changed in place outside the optimizer's step before it was copied."""
        return self._changed

    def run(self) -> None:
        """Copy every pending tensor, in order."""
        try:
            for index, (live, copy, version) in enumerate(self._pending):
                copy.copy_(live.detach())
                if live._version != version:
                    self._changed = True
                with self._progress:
                    self._done = index + 1
                    self._progress.notify_all()
        except Exception:  # out of memory: the save fails on it (`gate`, `check_unchanged`)
            self._failed = True
        finally:
            self._end()

    def _end(self) -> None:
        """No more copying: wake every `gate` and `release` waiting on it."""
        with self._progress:
            self._done = len(self._pending)
            self._progress.notify_all()
        self._copied.set()

    @functools.cached_property
    def _spans(self) -> list[tuple[int, int, int]]:
        """(start, end, index) of each copy's bytes, by start; made by the writer's thread
        at its first `gate`, not in `save()` (it would add to the loop's stall)."""
        return sorted((copy.data_ptr(), copy.data_ptr() + copy.numel() * copy.element_size(), index)
                      for index, (_, copy, _) in enumerate(self._pending))

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [start for start, _, _ in self._spans]

    def cancel(self) -> None:
        """The copy will never run (its save did not start): fail it, and let `release` return."""
        self._failed = True
        self._end()

    def gate(self, data: Any) -> None:
        """Block until `data` (bytes `torch.save` is about to write: a record of one storage)
        is copied, if it lies in one of the copies.

        Raises:
            LoopUsageError: the copy failed (the save fails with it).
        """
        view = np.frombuffer(data, dtype=np.uint8)
        if not view.size:
            return
        address = view.ctypes.data
        at = bisect.bisect_right(self._starts, address + view.size - 1) - 1
        while at >= 0 and self._spans[at][1] > address:  # every copy the bytes overlap
            index = self._spans[at][2]
            with self._progress:
                while self._done <= index:
                    self._progress.wait()
            at -= 1
        if self._failed:
            raise LoopUsageError("the copy of the optimizer's tensors failed")

    def release(self) -> float:
        """Wait until every tensor is copied (in the loop's thread, before the optimizer
        changes them); the seconds this waited."""
        started = time.monotonic()
        self._copied.wait()
        with self._lock:
            if not self._released:
                self._note_changes()  # every change the loop's thread made so far has bumped its counter
                self._released = True
        return time.monotonic() - started

    def check_unchanged(self) -> None:
        """Raise if a tensor was changed in place between `save()` and the optimizer's
        next step (or now, if it has not come yet); called before the commit.

        Raises:
            LoopUsageError: the copy may hold a mixed state (the save fails with it).
        """
        with self._lock:
            if not self._released:
                self._note_changes()
            if self._failed:
                raise LoopUsageError("the copy of the optimizer's tensors failed")
            if self._changed:
                raise LoopUsageError(
                    "a parameter or optimizer state was changed in place outside optimizer.step() while a "
                    "background save copied it (call session.wait_for_save() first)")

    def _note_changes(self) -> None:
        if any(live._version != version for live, _, version in self._pending):
            self._changed = True
