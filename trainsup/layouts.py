"""What is in a job's checkpoint dir, for any training script: progress, named checkpoints, quarantine.

The supervisor does not load checkpoints; it needs three answers from the files:

- *Did the attempt make progress?* Any new or changed file under the checkpoint dir
  (`newest_write`), whatever the layout; the `.lock`, hidden and temp files and
  `quarantine/` do not count.
- *What will the next attempt find?* (`find_checkpoints`) The layouts it knows, newest
  first: the trainer library's `step-NNNNNNNNN/` (only those whose manifest and file
  sizes agree), Lightning's `*.ckpt`, the HF Trainer's `checkpoint-N/`, and the files
  matched by the job's `resume.checkpoint` pattern.
- *Where does a checkpoint that kills every attempt go?* `quarantine/`, moved, never
  deleted (`quarantine`).

Stdlib only: `trainsup status` uses it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from trainsup.contracts import LOCK_FILE, parse_hf_checkpoint_dir, parse_step_dir
from trainsup.durable import fsync_dir
from trainsup.manifest import InvalidCheckpointError, verify

QUARANTINE_DIR = "quarantine"
# A checkpoint dir set to a project folder could hold a data set: look at this many entries at most.
MAX_ENTRIES = 20_000
TRAINER, LIGHTNING, HF, RESUME = "trainsup", "lightning", "hf", "resume"


class FoundCheckpoint(NamedTuple):
    name: str  # relative to the checkpoint dir, e.g. `last.ckpt`, `checkpoint-1200`, `step-000001200`
    layout: str  # TRAINER, LIGHTNING, HF or RESUME
    written_at: float  # the newest file time in it
    is_dir: bool

    def describe(self, now: float) -> str:
        """`last.ckpt, written 40 s ago`, `checkpoint-1200/`, `step-000001200 (verified)`."""
        if self.layout == TRAINER:
            return f"{self.name} (verified)"
        if self.is_dir:
            return f"{self.name}/, written {_age(now - self.written_at)} ago"
        return f"{self.name}, written {_age(now - self.written_at)} ago"


def newest_write(checkpoint_dir: Path) -> float | None:
    """The newest modification time of any file that counts under `checkpoint_dir`."""
    return max((mtime for _, mtime in islice(_files(checkpoint_dir), MAX_ENTRIES)), default=None)


def find_checkpoints(checkpoint_dir: Path, resume_pattern: str | None = None) -> list[FoundCheckpoint]:
    """The checkpoints a restarted script may load, newest first.

    With a `resume_pattern` (the job's `resume.checkpoint`) only what it matches: the
    job said which files its script loads. Otherwise every layout we know.
    """
    found: dict[str, FoundCheckpoint] = {}
    if resume_pattern:
        for path in islice(checkpoint_dir.glob(resume_pattern), MAX_ENTRIES):
            relative = os.path.relpath(path, checkpoint_dir)
            if _counts(Path(relative)) and (path.is_file() or path.is_dir()):
                found[relative] = FoundCheckpoint(relative, RESUME, _newest_in(path) if path.is_dir()
                                                  else path.stat().st_mtime, path.is_dir())
        return _newest_first(found.values())
    for entry in islice(_walk(checkpoint_dir), MAX_ENTRIES):
        relative = os.path.relpath(entry.path, checkpoint_dir)
        if entry.is_dir(follow_symlinks=False):
            layout = _dir_layout(entry.name, Path(entry.path))
            if layout is not None:
                found[relative] = FoundCheckpoint(relative, layout, _newest_in(Path(entry.path)), True)
        elif entry.name.endswith(".ckpt"):
            found[relative] = FoundCheckpoint(relative, LIGHTNING, _mtime(entry), False)
    return _newest_first(found.values())


def _newest_first(found: Iterable[FoundCheckpoint]) -> list[FoundCheckpoint]:
    return sorted(found, key=lambda c: (c.written_at, c.name), reverse=True)


def newest_checkpoint(checkpoint_dir: Path, resume_pattern: str | None = None) -> FoundCheckpoint | None:
    found = find_checkpoints(checkpoint_dir, resume_pattern)
    return found[0] if found else None


def quarantine(checkpoint_dir: Path, name: str) -> Path | None:
    """Move checkpoint `name` into `<checkpoint_dir>/quarantine/` (a new name if taken); None if it is gone.

    Raises:
        OSError: it could not be moved.
    """
    source = checkpoint_dir / name
    if not os.path.lexists(source):
        return None
    folder = checkpoint_dir / QUARANTINE_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        # planted by someone who can write the checkpoint dir: never move checkpoints through it
        raise OSError(f"{folder} is not a directory of its own (a symbolic link?); not moving {name} into it")
    target = folder / name.replace(os.sep, "__")
    if os.path.lexists(target):
        target = target.with_name(f"{target.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    os.rename(source, target)
    fsync_dir(folder)
    fsync_dir(source.parent)
    return target


# --- walking --------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[os.DirEntry]:
    """Every entry under `root` that counts, depth first; checkpoint dirs are not entered."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        if not _counts(Path(entry.name)):
            continue
        yield entry
        if entry.is_dir(follow_symlinks=False) and _dir_layout(entry.name, Path(entry.path)) is None:
            yield from _walk(Path(entry.path))


def _files(root: Path) -> Iterator[tuple[str, float]]:
    for entry in _walk(root):
        if entry.is_dir(follow_symlinks=False):
            if _dir_layout(entry.name, Path(entry.path)) is not None:
                for inner in _walk(Path(entry.path)):
                    if not inner.is_dir(follow_symlinks=False):
                        yield inner.path, _mtime(inner)
        else:
            yield entry.path, _mtime(entry)


def _counts(relative: Path) -> bool:
    """Not the lock, not hidden or temporary, not in quarantine."""
    parts = relative.parts
    if not parts or parts[0] == QUARANTINE_DIR:
        return False
    return not any(p == LOCK_FILE or p.startswith(".") or ".tmp" in p or p.endswith("~") for p in parts)


def _dir_layout(name: str, path: Path) -> str | None:
    if parse_step_dir(name) is not None:
        try:
            verify(path, hashes=False)
        except InvalidCheckpointError:
            return None
        return TRAINER
    if parse_hf_checkpoint_dir(name) is not None:
        return HF
    return None


def _newest_in(path: Path) -> float:
    times = [_mtime(e) for e in _walk(path) if not e.is_dir(follow_symlinks=False)]
    return max(times, default=_stat_mtime(path))


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return 0.0


def _stat_mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
