"""What removing a finished job deletes, how much that frees, and the pruning of old attempts.

Shared by `trainsup clean`/`remove` (which list and measure) and the daemon (which
deletes, as it applies a `remove` request). Stdlib only (but for reading the config file).

A job's dir (`jobs/<id>/`: attempt logs, run dirs, the default checkpoint dir) goes with
the job. A checkpoint dir the user named in the spec stays unless `--checkpoints`
asked for it, and even then never when it holds the job's workdir or the home folder,
or another job still names it.

Pruning: when attempt N starts, the logs and run dirs of attempts N - keep and older
are deleted (the attempts' rows and the timeline stay). `keep` is `keep_attempts:` in
the user's config file (`$TRAINSUP_CONFIG`, else `~/.config/trainsup/config.yaml`);
0 keeps every attempt.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

from trainsup.userconfig import UserConfigError, read_config

DEFAULT_KEEP_ATTEMPTS = 10


def disk_usage(paths: list[Path]) -> int:
    """Bytes the file system gives `paths` and everything under them, as `du` counts (each inode
    once, links not followed, directories included)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = list(paths)
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                stack += [Path(path, name) for name in os.listdir(path)]
            except OSError:
                continue
    return total


def named_checkpoint_dir(job_dir: Path, checkpoint_dir: str, workdir: str | None) -> tuple[Path | None, str | None]:
    """The checkpoint dir `--checkpoints` may delete with the job, or None and why it stays.

    None without a reason: it is inside the job dir, which goes anyway.
    """
    path = Path(checkpoint_dir)
    if path == job_dir or job_dir in path.parents:
        return None, None
    if workdir and (path == Path(workdir) or path in Path(workdir).parents):
        return None, f"kept {path}: it holds the job's workdir"
    home = Path.home()
    if path == Path("/") or path == home or path in home.parents:
        return None, f"kept {path}: it holds your home folder"
    return path, None


def removal_paths(job_dir: Path, checkpoint_dir: Path | None, job_id: str) -> list[Path]:
    """What removing the job deletes: its dir, and the named checkpoint dir with what `--fresh` set aside from it."""
    paths = [job_dir]
    if checkpoint_dir is not None:
        paths += [checkpoint_dir, checkpoint_dir.with_name(f"{checkpoint_dir.name}.before-{job_id}")]
    return paths


def delete(paths: list[Path]) -> None:
    """Delete each path and what is under it; a missing one is fine (a removal redone after a crash)."""
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(path)
        else:
            os.unlink(path)


def _remove_tree(path: Path, tries: int = 5) -> None:
    """`shutil.rmtree`, again when a file appeared meanwhile: an attempt's `record.json` is
    written in the background and can land in a run dir while it is being deleted."""
    for attempt in range(tries):
        try:
            shutil.rmtree(path)
            return
        except OSError as exc:
            if not os.path.lexists(path):
                return
            # ENOTEMPTY: a file arrived; ENOENT: its temp file was renamed away under us
            if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT) or attempt == tries - 1:
                raise
            time.sleep(0.1)


def keep_attempts(config: Path | None = None) -> int:
    """How many attempts' logs and run dirs each job keeps (`keep_attempts:` in the config file)."""
    try:
        keep = read_config(config).get("keep_attempts")
    except UserConfigError:
        return DEFAULT_KEEP_ATTEMPTS
    return keep if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 0 else DEFAULT_KEEP_ATTEMPTS


def prune_attempts(job_dir: Path, newest: int, keep: int) -> list[Path]:
    """Delete the logs and run dirs of attempts older than the newest `keep`; return what went."""
    if keep <= 0:
        return []
    gone = []
    for number in range(1, newest - keep + 1):
        for path in (job_dir / f"attempt-{number}.log", job_dir / f"attempt-{number}.run"):
            try:
                if os.path.lexists(path):
                    delete([path])
                    gone.append(path)
            except OSError:
                continue  # left for `trainsup clean`; pruning never stops an attempt from starting
    return gone


def format_bytes(size: float) -> str:
    """`512 B`, `1.5 MiB`, `12.0 GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def workdir_of(spec_json: str) -> str | None:
    """The resolved workdir of a stored spec, read without pydantic."""
    workdir = json.loads(spec_json).get("workdir")
    return workdir if isinstance(workdir, str) else None
