"""The file-system operations a checkpoint save is made of, behind one seam.

Every mutation of the checkpoint directory goes through a `FileOps` object, so
tests can record the operations, crash after any of them, drop what was not
fsynced, or make a write fail with ENOSPC. Reads go straight to the OS.

A checkpoint directory may be one other users can write (a sticky scratch dir, a
shared dir the user opted into): no operation here follows a symbolic link it did
not make, and every new file is created with O_EXCL, so a name planted in advance
makes the save fail instead of writing through it.

`write_file` writes what a file has past its first 16 MiB with O_DIRECT from aligned
buffers (`DirectFile`; `direct_io = False` turns that off): the page cache costs the CPU
more than the disk costs time, and a background save shares the cores with training.
What survives a power cut is still what an fsync covered.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import Future, wait
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from trainsup import durable
from trainsup.textlog import get_logger
from trainsup.threadpool import pool
from trainsup.trainer.directfile import DirectFile

Writer = Callable[[BinaryIO], None]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_pending: set[Future[None]] = set()
_pending_lock = threading.Lock()


class FileOps:
    """The real operations. Subclass and override to inject faults."""

    direct_io = True  # big files past 16 MiB with O_DIRECT (see `DirectFile`)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def write_file(self, path: Path, write: Writer) -> None:
        """Create `path` (it must not exist, not even as a symlink) and fill it by calling `write`; no fsync."""
        file = DirectFile(os.open(path, _CREATE, 0o666), direct=self.direct_io)
        try:
            write(file)  # type: ignore[arg-type]
            file.finish()
        finally:
            file.close()

    def fsync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: Path) -> None:
        durable.fsync_dir(path)

    def fsync_all(self, files: Sequence[Path], dirs: Sequence[Path] = ()) -> list[OSError | None]:
        """`fsync_file` each of `files` and `fsync_dir` each of `dirs`, all at the same time;
        what each raised (None where nothing), files first, in order.

        At the same time because one journal commit can carry several: a checkpoint's
        manifest and directory become durable while its big file does, not after it. The
        first (the big file) is fsynced in this thread: waking a thread for it costs up to
        a millisecond on busy cores, in the save's path."""
        calls = [(self.fsync_file, path) for path in files] + [(self.fsync_dir, path) for path in dirs]
        if not calls:
            return []
        (first, path), others = calls[0], calls[1:]
        meanwhile = [pool("fsync", workers=4).submit(_error_of, call, other) for call, other in others]
        return [_error_of(first, path), *(future.result() for future in meanwhile)]

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically move `src` to `dst`, replacing a file (never a non-empty directory)."""
        os.replace(src, dst)

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path)

    def remove_file(self, path: Path) -> None:
        os.unlink(path)

    def remove_tree_later(self, path: Path) -> None:
        """`remove_tree(path)` in a background thread: freeing a GiB of checkpoint takes a
        tenth of a second or more. `path` must already be out of the way under a name that
        `CheckpointDir.prepare` removes, for a removal the process does not live to finish."""
        with _pending_lock:
            _pending.difference_update([done for done in _pending if done.done()])
            _pending.add(pool("remove").submit(self._remove_tree_logged, path))

    def _remove_tree_logged(self, path: Path) -> None:
        try:
            self.remove_tree(path)
        except OSError as exc:
            get_logger().warning("could not remove %s (%s); the next start removes it", path, exc.strerror or exc)


def _error_of(call: Callable[[Path], None], path: Path) -> OSError | None:
    try:
        call(path)
    except OSError as exc:
        return exc
    return None


def wait_for_removals() -> None:
    """Return once every `remove_tree_later` asked for so far in this process has ended."""
    with _pending_lock:
        pending = list(_pending)
        _pending.clear()
    wait(pending)


def make_dirs(path: Path, mode: int = 0o755) -> list[Path]:
    """Create `path` and its missing parents, each made durable in its parent (fsync of
    the parent after each new level), and return the directories created, top first.

    `mode` (before the umask) is never writable by group or others, so a directory the
    library made passes its own check for directories other users can write.

    Raises:
        OSError: a level cannot be created, or exists and is not a directory.
    """
    return durable.make_dirs(Path(os.path.abspath(path)), mode)
