"""Who could have written a checkpoint directory, and what the trainer refuses to load from it.

A checkpoint is loaded into the training process (`weights_only`, but weights, optimizer
state and progress all the same), so a checkpoint dir another user can write lets that
user choose what this run becomes. By default the trainer refuses:

- a checkpoint dir owned by another user (not this user, not root), or writable by
  others, or by a group that is not the owner's own private group, unless it has the
  sticky bit (then nobody can rename or delete another user's entries; what they add
  is caught below);
- a checkpoint dir that is a symbolic link made by another user;

and passes over (like a corrupt checkpoint) a `step-…` dir, its `manifest.json` or one
of its files that is a symbolic link, not a regular file/directory, or owned by another
user. `allow_shared_dir` (or `TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR=1`) accepts other
owners and writable dirs; symbolic links are refused either way.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Literal

from trainsup.trainer.environment import ENV_ALLOW_SHARED_CHECKPOINT_DIR
from trainsup.trainer.errors import UnsafeCheckpointDirError

_OPT_IN = (f"pass allow_shared_dir=True to Session (or set {ENV_ALLOW_SHARED_CHECKPOINT_DIR}=1) "
           "if it is meant to be shared")


def check_checkpoint_dir(path: Path, allow_shared: bool) -> None:
    """Refuse a checkpoint dir another user could have written (see the module doc).

    Raises:
        UnsafeCheckpointDirError: one sentence naming the owner and the mode.
    """
    if allow_shared:
        return
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and not trusted(link.st_uid):
        raise UnsafeCheckpointDirError(
            f"The checkpoint directory {path} is a symbolic link made by {describe_user(link.st_uid)}; "
            f"refusing to keep checkpoints where another user points them; {_OPT_IN}."
        )
    st = os.stat(path)
    problems = []
    if not trusted(st.st_uid):
        problems.append(f"owned by {describe_user(st.st_uid)}")
    writers = _other_writers(st)
    if writers:
        problems.append(f"writable by {writers}")
    if problems:
        raise UnsafeCheckpointDirError(
            f"The checkpoint directory {path} is {' and '.join(problems)} (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to load checkpoints another user could have written; {_OPT_IN}."
        )


def entry_problem(path: Path, kind: Literal["dir", "file"], allow_shared: bool) -> str | None:
    """Why the checkpoint entry `path` must not be read, in a few words; None when it may
    (or does not exist: verification says so)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{path.name} is a symbolic link"
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        return f"{path.name} is not a directory"
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        return f"{path.name} is not a regular file"
    if not allow_shared and not trusted(st.st_uid):
        return f"{path.name} is owned by {describe_user(st.st_uid)}, not by this user"
    return None


def trusted(uid: int) -> bool:
    """This user, or root (who can write anything anyway)."""
    return uid in (os.geteuid(), 0)


def describe_user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _describe_group(gid: int) -> str:
    try:
        return f"group {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"group {gid}"


def _other_writers(st: os.stat_result) -> str | None:
    """`others`, `group 1002 (team)`, or None: who besides the owner may add, rename or
    remove entries of the directory `st`."""
    if st.st_mode & stat.S_ISVTX:
        return None  # sticky: entries of other users cannot be renamed or removed
    if st.st_mode & stat.S_IWOTH:
        return "others"
    if st.st_mode & stat.S_IWGRP and not _private_group(st):
        return _describe_group(st.st_gid)
    return None


def _private_group(st: os.stat_result) -> bool:
    """The owner's own group (user private groups, umask 002): named like the owner, the
    owner's primary group, no other member listed."""
    try:
        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return owner.pw_gid == st.st_gid and group.gr_name == owner.pw_name and set(group.gr_mem) <= {owner.pw_name}
