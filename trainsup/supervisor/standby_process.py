"""The job side of a warm standby: an interpreter that has already imported what the
job imports, waiting to become the next attempt.

The standby monitor starts it with the job's own interpreter, interpreter options,
working directory and environment, by path (the job's Python need not have trainsup
installed), so it uses the standard library only:

    <python> [options] standby_process.py SOCKET_FD PRELOAD_JSON COMMAND_JSON

It imports the modules named in PRELOAD_JSON (or, for `null`, the installed packages
the script or module imports at its top level), says `ready` on the socket, and waits. The
monitor then sends the attempt's command, working directory and environment, with the
attempt log and the checkpoint-dir lock as file descriptors. If nothing the preload
depended on changed (its module files, the interpreter, the environment apart from
the per-attempt `TRAINSUP_*` and `CUDA_*` variables), it answers `go` and runs the
script as `python script.py` or `python -m module` would; otherwise it answers
`stale <why>` and exits, and the monitor starts a fresh process instead.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import runpy
import shutil
import socket
import sys
from typing import NamedTuple

# Variables that differ from one attempt to the next by design; the rest must match.
PER_ATTEMPT_PREFIXES = ("TRAINSUP_", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
MAX_MESSAGE = 4 * 1024 * 1024  # a command + environment; execve allows 2 MiB of each
_FLAGS = set("bBdEIOPqRsSuv")  # python options without a value that a standby can honour
_OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")
# What a package imports lazily on the first training step, preloaded with it: torch's
# optimizers import torch._dynamo on their first step (about a second on a slow CPU).
LAZY_IMPORTS = {"torch": ["torch._dynamo"]}


class PythonEntry(NamedTuple):
    """`python [options] script.py args…` or `python [options] -m module args…`."""

    interpreter: list[str]  # the executable and its options
    kind: str  # "script" or "module"
    target: str
    args: list[str]


def python_entry(command: list[str], path: str | None = None) -> PythonEntry | None:
    """How `command` runs Python code, or None if a standby cannot stand in for it
    (not Python, `-c`, `-i`, stdin, an option we do not know).

    A command that is itself a Python script, such as `torchrun` or `accelerate` (found on
    `path`, the job's PATH, its first line starting a Python interpreter), counts as
    `python <that script> args…`.
    """
    if not command:
        return None
    if not _is_python(command[0]):
        script = _python_script(command[0], path)
        return None if script is None else PythonEntry([script[0]], "script", script[1], command[1:])
    index = 1
    while index < len(command):
        word = command[index]
        if word in _OPTIONS_WITH_VALUE:
            index += 2
            continue
        if word.startswith(("-X", "-W")):
            index += 1
            continue
        if word == "-m":
            if index + 1 >= len(command):
                return None
            return PythonEntry(command[:index], "module", command[index + 1], command[index + 2:])
        if word.startswith("-m"):
            return PythonEntry(command[:index], "module", word[2:], command[index + 1:])
        if word.startswith("-"):
            if len(word) < 2 or not set(word[1:]) <= _FLAGS:
                return None  # -c, -i, -, --help and anything we do not know
            index += 1
            continue
        return PythonEntry(command[:index], "script", word, command[index + 1:])
    return None


def _python_script(name: str, path: str | None) -> tuple[str, str] | None:
    """(interpreter, script) if `name` (a bare name looked up on `path`, or an absolute
    path) is a script whose `#!` line runs a Python interpreter, as pip's entry points do."""
    if os.sep in name and not os.path.isabs(name):
        return None  # relative to the job's working directory, not ours
    found = shutil.which(name, path=path) if os.sep not in name else name
    if found is None:
        return None
    try:
        with open(found, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        words = [shutil.which(words[1], path=path) or words[1]]
    if len(words) != 1 or not os.path.isabs(words[0]) or not _is_python(words[0]):
        return None
    return words[0], os.path.abspath(found)


def _is_python(executable: str) -> bool:
    name = os.path.basename(executable)
    if not name.startswith("python"):
        return False
    version = name[len("python"):]
    return all(part.isdigit() for part in version.split(".")) if version else True


def top_level_imports(script: str) -> list[str]:
    """The modules `script` imports at its top level, in order (`from x import y` counts as x)."""
    try:
        with open(script, "rb") as handle:
            tree = ast.parse(handle.read(), filename=script)
    except (OSError, SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return list(dict.fromkeys(names))


def module_source(name: str, search: list[str]) -> str | None:
    """The file `python -m name` runs, found on `search` (sys.path) without importing
    anything: importing its packages would run their code ahead of time."""
    parts = name.split(".")
    for base in search:
        folder = os.path.join(base or os.getcwd(), *parts)
        for candidate in (folder + ".py", os.path.join(folder, "__main__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def preload_of(entry: PythonEntry) -> list[str]:
    """What to preload when the spec names nothing: the installed packages the script or
    module imports at its top level (not the job's own modules), with their lazy imports."""
    source = entry.target if entry.kind == "script" else module_source(entry.target, sys.path)
    if source is None:
        return []
    own = [os.path.dirname(os.path.realpath(source)), os.getcwd()]
    return with_lazy_imports(installed(top_level_imports(source), own))


def with_lazy_imports(names: list[str]) -> list[str]:
    """`names`, each followed by what it imports lazily on a training step (`LAZY_IMPORTS`)."""
    expanded = []
    for name in names:
        expanded += [name, *LAZY_IMPORTS.get(name.partition(".")[0], [])]
    return list(dict.fromkeys(expanded))


def installed(names: list[str], own_dirs: list[str]) -> list[str]:
    """Of `names`, those found outside the job's own folders: the job's own modules are
    not run ahead of time (they may do work on import), installed packages are."""
    own = [os.path.realpath(path) for path in own_dirs]
    kept = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name.partition(".")[0])
        except (ImportError, ValueError):
            continue
        origin = spec.origin if spec is not None else None
        if origin is None or origin in ("built-in", "frozen"):
            if spec is not None:
                kept.append(name)
            continue
        location = os.path.realpath(origin)
        if not any(location == base or location.startswith(base + os.sep) for base in own):
            kept.append(name)
    return kept


def preload(names: list[str]) -> list[str]:
    """Import `names`; the problems, one line each (a module that fails is skipped)."""
    problems = []
    for name in names:
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 - whatever an import raises, the job would meet it itself
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def module_files() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every loaded module's file and of the interpreter."""
    files = [sys.executable]
    files += [path for module in list(sys.modules.values())
              if isinstance(path := getattr(module, "__file__", None), str)]
    stamps = {}
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            continue
        stamps[path] = (info.st_mtime_ns, info.st_size)
    return stamps


def why_stale(loaded: dict[str, tuple[int, int]], environment: dict[str, str], wanted: dict[str, str],
              cwd: str | None, entry: PythonEntry | None, interpreter: list[str]) -> str | None:
    """Why this standby must not become the attempt (whose command runs `entry`), or None if it may."""
    if entry is None or entry.interpreter != interpreter:
        return "the command's interpreter or options are not the standby's"
    if cwd and os.path.realpath(cwd) != os.path.realpath(os.getcwd()):
        return f"the working directory is {cwd}, not {os.getcwd()}"
    for key in sorted(set(environment) | set(wanted)):
        if not key.startswith(PER_ATTEMPT_PREFIXES) and environment.get(key) != wanted.get(key):
            return f"the environment variable {key} changed"
    now = module_files()
    for path, stamp in loaded.items():
        if now.get(path) != stamp:
            return f"{path} changed since it was preloaded"
    if _cuda_initialised():
        return "CUDA was initialised while preloading"
    return None


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch is the job's to meet
        return False


def receive(sock: socket.socket) -> tuple[dict, list[int]]:
    """One activation message: JSON, then end of stream; the fds come with its first part."""
    chunks, fds = [], []
    while True:
        data, received, _flags, _address = socket.recv_fds(sock, 1 << 20, 4)
        fds.extend(received)
        if not data:
            break
        chunks.append(data)
        if sum(len(chunk) for chunk in chunks) > MAX_MESSAGE:
            raise ValueError("activation message too large")
    return json.loads(b"".join(chunks)), fds


def become(entry: PythonEntry, before: dict[str, str], environment: dict[str, str], log_fd: int, lock_fd: int) -> None:
    """Turn this process into the attempt: its output, environment, argv and sys.path.

    Only the variables that differ from the standby's own (`before`, read before the
    preload) change: what a preloaded module set on import stays set, as it would be.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.set_inheritable(lock_fd, True)  # held for the attempt's life, like the monitor's own
    for key in set(before) - set(environment):
        os.environ.pop(key, None)
    for key, value in environment.items():
        if before.get(key) != value:
            os.environ[key] = value
    sys.argv = [entry.target, *entry.args]
    if entry.kind == "script":
        runpy.run_path(entry.target, run_name="__main__")
    else:
        runpy.run_module(entry.target, run_name="__main__", alter_sys=True)


def take_the_jobs_path(entry: PythonEntry) -> None:
    """sys.path[0] as `python script.py` (the script's folder) or `python -m` (the working
    directory) would set it, instead of this file's folder; before the preload, so that it
    finds what the job would."""
    if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return  # -P / -I: python puts nothing there
    if entry.kind == "script":
        sys.path.insert(0, os.path.dirname(os.path.realpath(entry.target)))
    else:
        sys.path.insert(0, os.getcwd())


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    wanted = json.loads(sys.argv[2])
    entry = python_entry(json.loads(sys.argv[3]), os.environ.get("PATH"))
    if entry is None:
        sock.sendall(b"failed the command does not run a Python script or module\n")
        return 2
    take_the_jobs_path(entry)
    if wanted is None:
        wanted = preload_of(entry)
    environment = dict(os.environ)
    problems = preload(wanted)
    loaded = module_files()
    sock.sendall(("ready " + json.dumps({"preloaded": wanted, "problems": problems}) + "\n").encode())
    try:
        message, fds = receive(sock)
    except (OSError, ValueError):
        return 0  # the monitor went away without activating us
    if len(fds) != 2:
        return 0
    log_fd, lock_fd = fds
    target = python_entry(message["command"], message["env"].get("PATH"))
    why = why_stale(loaded, environment, message["env"], message.get("cwd"), target, entry.interpreter)
    if why is not None:
        sock.sendall(f"stale {why}\n".encode())
        return 0
    sock.sendall(b"go\n")
    sock.close()
    become(target, environment, message["env"], log_fd, lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
