"""The record of what ran: `record.json` in each attempt's run dir. Stdlib only.

    python -m trainsup.record RUN_DIR CACHE_DIR

The daemon starts this once it has seen the attempt running (`launcher.start_recorder`),
so gathering never delays a start or a restart. It reads `launch.json` and writes:

    git       the workdir's repository: commit, branch, and "clean" or the sha256 of
              the uncommitted changes (`git diff HEAD --binary` plus the names and
              contents of untracked, not ignored files)
    python    the interpreter the command resolves to, and which rule found it:
              "command" (the command runs python itself), "PATH" (the `python` on the
              job's PATH, for torchrun, shell commands and the like) or "daemon"
              (none found: the daemon's own); its version, and every installed
              distribution's version from one importlib.metadata scan run *in that
              interpreter* (a subprocess, with a timeout; torch is never imported),
              cached under CACHE_DIR by the interpreter and its sys.path dirs' mtimes
    gpus      the UUIDs granted (CUDA_VISIBLE_DEVICES)
    host, boot_id

Environment variable values are never recorded. The trainer library adds
`runtime.json` (torch, CUDA and cuDNN versions as torch reports them); `load()` merges it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainsup.contracts import STARTED_FILE, read_json, read_launch
from trainsup.durable import write_json_atomic

RECORD_FILE = "record.json"
RUNTIME_FILE = "runtime.json"  # written by trainsup.trainer: {"torch", "cuda", "cudnn"}
RECORD_VERSION = 1
GIT_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 60.0
UNTRACKED_HASH_LIMIT = 16 * 2**20  # larger untracked files count by name and size only
PYTHON_NAME = re.compile(r"python[0-9.]*$")

PROBE = r"""
import json, os, sys
parts = [sys.prefix]
for entry in sys.path:
    try:
        parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
    except OSError:
        pass
key = "|".join(parts)
out = {"executable": sys.executable, "version": sys.version.split()[0],
       "implementation": sys.implementation.name, "prefix": sys.prefix, "key": key, "packages": None}
if key != sys.argv[1]:
    from importlib import metadata
    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(name.lower().replace("_", "-"), dist.version)
    out["packages"] = dict(sorted(packages.items()))
print(json.dumps(out))
"""


def gather(run_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    launch = read_launch(run_dir)
    env = launch.env if launch else {}
    cwd = launch.cwd if launch else None
    return {
        "version": RECORD_VERSION,
        "recorded_at": time.time(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "workdir": cwd,
        "git": git_state(cwd) if cwd else None,
        "python": python_state(launch.command if launch else [], env, cwd, cache_dir),
        "gpus": [uuid for uuid in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if uuid],
    }


def load(run_dir: Path) -> dict[str, Any] | None:
    """The attempt's record with the trainer's runtime versions, or None before it is written."""
    record = read_json(run_dir / RECORD_FILE)
    if not isinstance(record, dict):
        return None
    runtime = read_json(run_dir / RUNTIME_FILE)
    record["runtime"] = runtime if isinstance(runtime, dict) else None
    return record


# --- git -----------------------------------------------------------------------------


def _git(cwd: str, *args: str) -> bytes | None:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take the user's index.lock
    try:
        result = subprocess.run(["git", "-C", cwd, *args], capture_output=True, timeout=GIT_TIMEOUT_S, env=env,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(cwd: str) -> dict[str, Any] | None:
    """None outside a git work tree (or without git)."""
    root = _git(cwd, "rev-parse", "--show-toplevel")
    if root is None:
        return None
    head = _git(cwd, "rev-parse", "--verify", "-q", "HEAD")
    branch = _git(cwd, "symbolic-ref", "--short", "-q", "HEAD")
    status = _git(cwd, "status", "--porcelain=v1", "-z", "--untracked-files=normal") or b""
    state: dict[str, Any] = {
        "root": root.decode(errors="replace").strip(),
        "commit": head.decode().strip() if head else None,
        "branch": branch.decode(errors="replace").strip() if branch else None,
        "dirty": "clean",
        "changed_files": len([entry for entry in status.split(b"\0") if entry[:3].strip()]),
    }
    if status.strip(b"\0"):
        state["dirty"] = "sha256:" + _dirty_hash(cwd, has_head=head is not None)
    return state


def _dirty_hash(cwd: str, has_head: bool) -> str:
    digest = hashlib.sha256()
    digest.update(_git(cwd, "diff", "HEAD" if has_head else "--cached", "--binary", "--no-color", "--no-ext-diff") or b"")
    root = Path((_git(cwd, "rev-parse", "--show-toplevel") or b".").decode().strip())
    untracked = _git(cwd, "ls-files", "--others", "--exclude-standard", "-z", "--full-name", ":/") or b""
    for name in sorted(filter(None, untracked.split(b"\0"))):
        digest.update(b"\0untracked\0" + name + b"\0")
        path = root / os.fsdecode(name)
        try:
            if path.stat().st_size <= UNTRACKED_HASH_LIMIT:
                digest.update(path.read_bytes())
            else:
                digest.update(str(path.stat().st_size).encode())
        except OSError:
            pass
    return digest.hexdigest()


# --- python --------------------------------------------------------------------------


def resolve_python(command: list[str], env: dict[str, str], cwd: str | None) -> tuple[str, str]:
    """(interpreter path, how it was found: "command", "PATH" or "daemon")."""
    words = list(command)
    if len(words) >= 3 and words[1] == "-c" and os.path.basename(words[0]) in ("sh", "bash", "dash"):
        try:
            words = shlex.split(words[2])
        except ValueError:
            words = []
        while words and (words[0] == "exec" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0])):
            words.pop(0)
    path = env.get("PATH", os.defpath)
    if words and PYTHON_NAME.search(os.path.basename(words[0])):
        first = words[0]
        if "/" in first:
            found = first if os.path.isabs(first) else os.path.join(cwd or ".", first)
        else:
            found = shutil.which(first, path=path)
        if found and os.access(found, os.X_OK):
            return os.path.abspath(found), "command"
    for name in ("python", "python3"):
        if found := shutil.which(name, path=path):
            return os.path.abspath(found), "PATH"
    return sys.executable, "daemon"


def python_state(command: list[str], env: dict[str, str], cwd: str | None, cache_dir: Path | None) -> dict[str, Any]:
    executable, found_by = resolve_python(command, env, cwd)
    state: dict[str, Any] = {"executable": executable, "found_by": found_by}
    cache = cache_dir / f"packages-{hashlib.sha256(executable.encode()).hexdigest()[:16]}.json" if cache_dir else None
    cached = read_json(cache) if cache else None
    known_key = cached.get("key", "") if isinstance(cached, dict) else ""
    try:
        result = subprocess.run([executable, "-c", PROBE, known_key], capture_output=True, timeout=PROBE_TIMEOUT_S,
                                env=env, cwd=cwd if cwd and os.path.isdir(cwd) else None, stdin=subprocess.DEVNULL)
        probe = json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        state["error"] = f"cannot run {executable}: {exc.__class__.__name__}: {exc}"[:500]
        return state
    packages = probe.pop("packages")
    key = probe.pop("key")
    if packages is None and isinstance(cached, dict):
        packages, state["packages_cached"] = cached.get("packages"), True
    elif cache is not None and packages is not None:
        try:
            cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_json_atomic(cache, {"key": key, "packages": packages})
        except OSError:
            pass
    state.update(probe)
    state["packages"] = packages
    return state


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


# --- what changed between two records ----------------------------------------------


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What differs between two records (`trainsup diff`); an empty dict when nothing does."""
    changes: dict[str, Any] = {}
    og, ng = old.get("git") or {}, new.get("git") or {}
    for field in ("root", "commit", "branch", "dirty"):
        if og.get(field) != ng.get(field):
            changes[f"git.{field}"] = [og.get(field), ng.get(field)]
    op, np_ = old.get("python") or {}, new.get("python") or {}
    for field in ("executable", "version"):
        if op.get(field) != np_.get(field):
            changes[f"python.{field}"] = [op.get(field), np_.get(field)]
    runtime_old, runtime_new = old.get("runtime") or {}, new.get("runtime") or {}
    for field in sorted(set(runtime_old) | set(runtime_new)):
        if runtime_old.get(field) != runtime_new.get(field):
            changes[f"runtime.{field}"] = [runtime_old.get(field), runtime_new.get(field)]
    pkg_old, pkg_new = op.get("packages") or {}, np_.get("packages") or {}
    added = {n: pkg_new[n] for n in sorted(set(pkg_new) - set(pkg_old))}
    removed = {n: pkg_old[n] for n in sorted(set(pkg_old) - set(pkg_new))}
    changed = {n: [pkg_old[n], pkg_new[n]] for n in sorted(set(pkg_old) & set(pkg_new)) if pkg_old[n] != pkg_new[n]}
    if added or removed or changed:
        changes["packages"] = {"added": added, "removed": removed, "changed": changed}
    for field in ("gpus", "host", "boot_id"):
        if old.get(field) != new.get(field):
            changes[field] = [old.get(field), new.get(field)]
    return changes


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: python -m trainsup.record RUN_DIR [CACHE_DIR]", file=sys.stderr)
        return 2
    run_dir = Path(sys.argv[1])
    if (run_dir / RECORD_FILE).exists() or not (run_dir / STARTED_FILE).exists():
        return 0  # recorded already, or the job never ran
    record = gather(run_dir, Path(sys.argv[2]) if len(sys.argv) == 3 else None)
    write_json_atomic(run_dir / RECORD_FILE, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
