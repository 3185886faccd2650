"""`CheckpointDir`: the power-safe save protocol, verified lookup and retention of one directory.

Layout (inside the checkpoint dir):

    step-000001200/          committed by rename; state file(s) and manifest.json
    .tmp-step-000001300-x/   being written; removed by `prepare`
    .old-step-000001300-x/   a same-step checkpoint being replaced; restored by `prepare`
                             if the replacement never got its name, else removed
    .expired-step-000000900-x/  dropped by retention, being removed in the background;
                             removed by `prepare` if the process did not finish it
    LATEST                   hint only; the truth is the newest dir whose manifest verifies
    superseded-step-…-<t>/   set aside: corrupt, or newer than the checkpoint a run chose

A `step-…` entry, its manifest or a file it lists that is a symbolic link, not a regular
file, or (unless `shared`) owned by another user is passed over like a corrupt one
(`trainsup.trainer.ownership`); manifests are only read once that check passed.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from trainsup.contracts import parse_step_dir, step_dir_name
from trainsup.diskspace import free_bytes
from trainsup.trainer.errors import CheckpointSaveError, OptionError
from trainsup.trainer.fsops import FileOps, Writer, make_dirs
from trainsup.trainer.ownership import entry_problem
from trainsup.textlog import get_logger
from trainsup.manifest import (
    MANIFEST_NAME,
    FileDigest,
    HashingWriter,
    InvalidCheckpointError,
    Manifest,
    preferred_algorithm,
    read_manifest,
    verify,
)

LATEST = "LATEST"
_TEMP_PREFIXES = (".tmp-step-", ".LATEST.tmp")
_EXPIRED_PREFIX = ".expired-"
_REPLACED_PREFIX = ".old-"
_REPLACED = re.compile(r"\.old-(step-\d{9,})-[0-9a-f]+")

log = get_logger()


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def step(self) -> int:
        return self.manifest.step


@dataclass(frozen=True)
class Skipped:
    """A checkpoint passed over on resume, and why (a short phrase), for `resume.json`."""

    checkpoint: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"checkpoint": self.checkpoint, "why": self.why}


@dataclass(frozen=True)
class Retention:
    """Keep the newest `keep_last` checkpoints and the `keep_best` best by `metric`.

    `metric` and `mode` also say which checkpoint is best for `Session(resume="best")`;
    of checkpoints with the same value the older one ranks first.
    """

    keep_last: int | None = 3
    keep_best: int = 0
    metric: str | None = None
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise OptionError("Retention keep_last must be at least 1, or None to keep every checkpoint.")
        if self.keep_best < 0:
            raise OptionError("Retention keep_best must be 0 or more.")
        if self.keep_best and not self.metric:
            raise OptionError("Retention keep_best needs a metric to rank the checkpoints by.")
        if self.mode not in ("min", "max"):
            raise OptionError("Retention mode must be 'min' or 'max'.")


class CheckpointDir:
    """The trainer's checkpoints inside one directory; every change goes through `ops`.

    `shared`: checkpoints owned by other users may be loaded (symbolic links never are).
    """

    def __init__(self, root: Path, ops: FileOps | None = None, retention: Retention | None = None, *,
                 shared: bool = False) -> None:
        self.root = Path(root)
        self.ops = ops or FileOps()
        self.retention = retention or Retention()
        self.shared = shared
        self._saved: Checkpoint | None = None  # the last one this object committed

    def prepare(self) -> None:
        """Create the directory (durably) and remove what an interrupted save left behind."""
        make_dirs(self.root)
        for entry in sorted(self.root.iterdir()):
            if match := _REPLACED.fullmatch(entry.name):
                if os.path.lexists(self.root / match.group(1)):
                    self._remove_quietly(entry)
                else:
                    log.info("restoring %s: the save replacing it was interrupted", match.group(1))
                    self._restore_quietly(entry, self.root / match.group(1))
            elif entry.name.startswith((*_TEMP_PREFIXES, _EXPIRED_PREFIX)):
                left_by = "retention" if entry.name.startswith(_EXPIRED_PREFIX) else "an interrupted save"
                log.info("removing %s left by %s", entry.name, left_by)
                try:
                    if entry.is_dir() and not entry.is_symlink():
                        self.ops.remove_tree(entry)
                    else:
                        self.ops.remove_file(entry)
                except OSError as exc:
                    log.warning("could not remove %s: %s", entry, exc.strerror)

    # -- saving ---------------------------------------------------------------

    def save(self, step: int, files: Mapping[str, Writer], meta: Mapping[str, Any]) -> Checkpoint:
        """Write `files` as checkpoint `step` so that a crash at any instant leaves
        either the previous checkpoints or this one, complete.

        `meta` holds the manifest fields other than `step` and `files`.

        Raises:
            CheckpointSaveError: nothing was committed; earlier checkpoints are untouched.
        """
        name = step_dir_name(step)
        final = self.root / name
        temp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        replaced: Path | None = None
        latest: Path | None = None
        latest_updated = False
        try:
            self._check_free_space()
            self.ops.mkdir(temp)
            digests = {file_name: self._write_hashed(temp / file_name, writer) for file_name, writer in files.items()}
            manifest = Manifest(step=step, files=digests, **meta)
            self.ops.write_file(temp / MANIFEST_NAME, lambda file: file.write(manifest.to_bytes()))
            latest = self._write_latest(name)
            latest = self._make_durable(name, [temp / file_name for file_name in (*files, MANIFEST_NAME)], temp, latest)
            if os.path.lexists(final):
                replaced = self.root / f"{_REPLACED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
                self.ops.rename(final, replaced)
            self.ops.rename(temp, final)
            latest_updated = latest is not None and self._point_latest(latest, name)
            self.ops.fsync_dir(self.root)  # the commit; LATEST's rename rides on the same journal commit
        except Exception as exc:
            self._remove_quietly(temp)
            if latest is not None and not latest_updated:
                self._remove_quietly(latest, file=True)
            if replaced is not None and not os.path.lexists(final):
                self._restore_quietly(replaced, final)
            previous = self._newest_name()
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointSaveError(f"Saving checkpoint {name} failed ({_describe(exc)}); {kept}.") from exc
        if replaced is not None:
            self._remove_quietly(replaced)
        checkpoint = self._saved = Checkpoint(final, manifest)
        if latest_updated:  # else the disk refused even LATEST: keep the old checkpoints too
            try:
                self.apply_retention(keep=checkpoint.name)
            except Exception as exc:
                log.warning("retention after %s failed (%s); old checkpoints stay", checkpoint.name, _describe(exc))
        return checkpoint

    def _write_hashed(self, path: Path, writer: Writer) -> FileDigest:
        """Write `path` (no fsync yet) and return the digest of what was written."""
        measured: list[HashingWriter] = []
        algorithm = preferred_algorithm()

        def write(file: Any) -> None:
            measured.append(HashingWriter(file, algorithm))
            writer(measured[0])

        self.ops.write_file(path, write)
        return measured[0].digest()

    def _write_latest(self, name: str) -> Path | None:
        """LATEST's next content in a temp file (fsynced with the checkpoint's files), to
        be renamed in with the commit; None if it could not be written (LATEST is a hint:
        the save goes on without it)."""
        temp = self.root / f".LATEST.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # not guessable in advance
        try:
            self.ops.write_file(temp, lambda file: file.write(f"{name}\n".encode()))
        except Exception as exc:
            return self._drop_latest(name, temp, exc)
        return temp

    def _make_durable(self, name: str, files: list[Path], temp: Path, latest: Path | None) -> Path | None:
        """fsync the checkpoint's files, its directory and LATEST's temp file, all at once;
        return LATEST's temp file, or None if it could not be made durable.

        Raises:
            OSError: a file of the checkpoint or its directory could not be made durable.
        """
        errors = self.ops.fsync_all([*files, *([latest] if latest else [])], [temp])
        for error in [*errors[:len(files)], errors[-1]]:  # the checkpoint's files, then its dir
            if error is not None:
                raise error
        if latest is not None and (error := errors[len(files)]) is not None:
            return self._drop_latest(name, latest, error)
        return latest

    def _drop_latest(self, name: str, temp: Path, exc: BaseException) -> None:
        """LATEST's temp file could not be written or made durable: the save goes on without it."""
        log.warning("checkpoint %s: LATEST will not be updated (%s)", name, _describe(exc))
        self._remove_quietly(temp, file=True)

    def _point_latest(self, temp: Path, name: str) -> bool:
        try:
            self.ops.rename(temp, self.root / LATEST)
        except Exception as exc:
            log.warning("checkpoint %s is saved but LATEST was not updated (%s)", name, _describe(exc))
            self._remove_quietly(temp, file=True)
            return False
        return True

    def _check_free_space(self) -> None:
        newest = self._newest_name()
        if newest is None:
            return
        try:  # the manifest this object wrote last, when that is still the newest: no read (~0.1-0.3 ms)
            manifest = (self._saved.manifest if self._saved is not None and self._saved.name == newest
                        else self.read_manifest(self.root / newest))
        except InvalidCheckpointError:
            return
        needed = sum(d.size for d in manifest.files.values())
        free = free_bytes(self.root)
        if free is not None and free < needed:
            raise OSError(28, f"only {free} bytes free, the last checkpoint took {needed}")

    def _remove_quietly(self, path: Path, *, file: bool = False) -> None:
        """Remove the dir (or, with `file`, the file) `path` if it is there; errors are ignored."""
        try:
            if os.path.lexists(path):
                (self.ops.remove_file if file else self.ops.remove_tree)(path)
        except Exception:  # best effort; `prepare` removes it on the next start
            pass

    def _restore_quietly(self, replaced: Path, final: Path) -> None:
        try:
            self.ops.rename(replaced, final)
            self.ops.fsync_dir(self.root)
        except Exception as exc:
            log.warning("could not restore %s (%s)", final.name, _describe(exc))

    # -- finding --------------------------------------------------------------

    def step_dirs(self) -> list[Path]:
        """Committed checkpoint directories, newest step first (unverified)."""
        if not self.root.is_dir():
            return []
        found = [(step, e) for e in self.root.iterdir() if (step := parse_step_dir(e.name)) is not None and e.is_dir()]
        return [path for _, path in sorted(found, reverse=True)]

    def _newest_name(self) -> str | None:
        dirs = self.step_dirs()
        return dirs[0].name if dirs else None

    def verified(self, select: Literal["latest", "best"] = "latest", metric: str | None = None,
                 mode: Literal["min", "max"] = "min",
                 rejected: list[Skipped] | None = None) -> Iterator[Checkpoint]:
        """Checkpoints whose every file verifies, most preferred first; each rejected
        one is logged in one line with the reason, and appended to `rejected`."""
        for path in self._ordered(select, metric, mode):
            try:
                self.check_entries(path)
                manifest = verify(path)
                if manifest.step != parse_step_dir(path.name):
                    raise InvalidCheckpointError(f"the manifest says step {manifest.step}")
            except InvalidCheckpointError as exc:
                log.warning("checkpoint %s is not usable: %s; falling back to an older one", path.name, exc)
                if rejected is not None:
                    rejected.append(Skipped(path.name, str(exc)))
                continue
            yield Checkpoint(path, manifest)

    def _ordered(self, select: str, metric: str | None, mode: str) -> list[Path]:
        dirs = self.step_dirs()
        if select == "latest":
            return dirs
        if not metric:
            raise ValueError("selecting the best checkpoint needs a metric")
        scored = []
        for newest_first, path in enumerate(dirs):
            value = self._metric_of(path, metric)
            if value is not None:
                scored.append((value if mode == "min" else -value, -newest_first, path))  # ties: the older
        return [path for *_, path in sorted(scored)]

    def read_manifest(self, path: Path) -> Manifest:
        """The manifest of the checkpoint `path`, once neither it nor its dir is a symlink or another user's.

        Raises:
            InvalidCheckpointError: why it must not be read, or does not parse.
        """
        why = entry_problem(path, "dir", self.shared) or entry_problem(path / MANIFEST_NAME, "file", self.shared)
        if why:
            raise InvalidCheckpointError(why)
        return read_manifest(path)

    def check_entries(self, path: Path) -> None:
        """Raise InvalidCheckpointError if the checkpoint `path` or a file it lists must not be read."""
        for name in self.read_manifest(path).files:
            if "/" not in name and (why := entry_problem(path / name, "file", self.shared)):
                raise InvalidCheckpointError(why)

    def _metric_of(self, path: Path, metric: str) -> float | None:
        try:
            value = self.read_manifest(path).metrics.get(metric)
        except InvalidCheckpointError:
            return None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # -- removing -------------------------------------------------------------

    def set_aside(self, path: Path, why: str) -> None:
        """Rename a checkpoint out of the resume order, keeping its files."""
        target = self.root / f"superseded-{path.name}-{time.time_ns()}"
        log.warning("moving %s to %s: %s", path.name, target.name, why)
        try:
            self.ops.rename(path, target)
        except PermissionError as exc:  # another user's entry in a sticky dir (e.g. /tmp): it stays, skipped again
            log.warning("could not move %s aside (%s); it stays where it is", path.name, exc.strerror)
            return
        self.ops.fsync_dir(self.root)

    def apply_retention(self, keep: str) -> None:
        policy = self.retention
        dirs = self.step_dirs()
        kept = {keep}
        kept.update(p.name for p in (dirs if policy.keep_last is None else dirs[: policy.keep_last]))
        if policy.keep_best and policy.metric:
            kept.update(p.name for p in self._ordered("best", policy.metric, policy.mode)[: policy.keep_best])
        for path in dirs:
            if path.name not in kept:
                log.info("retention: removing %s", path.name)
                self._expire(path)

    def _expire(self, path: Path) -> None:
        """Take `path` out of the resume order at once (one rename) and free its bytes in
        the background, off the save's critical path."""
        expired = self.root / f"{_EXPIRED_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        self.ops.rename(path, expired)
        self.ops.remove_tree_later(expired)


def _describe(exc: BaseException) -> str:
    """A few words for `exc`, preferring the OS error underneath a wrapper."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror if not seen.filename else f"{seen.strerror}: {seen.filename}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else exc.__class__.__name__)
