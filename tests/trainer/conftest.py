"""Shared helpers for the trainer tests, offered as fixtures.

`PowerLossModel` is the recording model of the file system: it applies each
checkpoint operation to a real directory and keeps, beside it, what a power cut
would leave (only what was fsynced: file contents by fsync_file, directory entries
by fsync_dir). `materialize` writes that surviving state into a fresh directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from trainsup.trainer.fsops import FileOps, Writer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("train_script.py")


class SimulatedCrash(BaseException):
    """Raised where the process "dies"; BaseException so no `except Exception` cleans up."""


class _File:
    def __init__(self, durable: bytes | None) -> None:
        self.durable = durable


class _Dir:
    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}


class PowerLossModel(FileOps):
    """Real operations plus a model of what survives losing power after any of them.

    crash_after: raise SimulatedCrash right after this many operations, and refuse
        every later one (the process is gone).
    skip: operation names made into no-ops, to build the broken variants that the
        harness must catch ("fsync_file", "fsync_dir").
    """

    def __init__(self, root: Path, crash_after: int | None = None, skip: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.crash_after = crash_after
        self.skip = skip
        self.done: list[str] = []
        self.crashed = False
        self.tree = self._scan(root)

    def _scan(self, path: Path) -> _Dir:
        node = _Dir()
        for entry in path.iterdir():
            node.entries[entry.name] = self._scan(entry) if entry.is_dir() else _File(entry.read_bytes())
        node.durable = dict(node.entries)
        return node

    def _lookup(self, path: Path) -> Any:
        node: Any = self.tree
        for part in path.relative_to(self.root).parts:
            node = node.entries[part]
        return node

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        return self._lookup(path.parent), path.name

    def _op(self, name: str, real: Callable[[], None], model: Callable[[], None]) -> None:
        if self.crashed:
            raise SimulatedCrash(f"{name} after the crash")
        if name not in self.skip:
            real()
            model()
        self.done.append(name)
        if self.crash_after is not None and len(self.done) >= self.crash_after:
            self.crashed = True
            raise SimulatedCrash(f"crash after operation {len(self.done)} ({name})")

    def mkdir(self, path: Path) -> None:
        def model() -> None:
            parent, name = self._parent(path)
            parent.entries[name] = _Dir()

        self._op("mkdir", lambda: FileOps.mkdir(self, path), model)

    def write_file(self, path: Path, write: Writer) -> None:
        def model() -> None:
            parent, name = self._parent(path)
            parent.entries[name] = _File(None)

        self._op("write_file", lambda: FileOps.write_file(self, path, write), model)

    def fsync_file(self, path: Path) -> None:
        def model() -> None:
            self._lookup(path).durable = path.read_bytes()

        self._op("fsync_file", lambda: FileOps.fsync_file(self, path), model)

    def fsync_dir(self, path: Path) -> None:
        def model() -> None:
            node = self._lookup(path)
            node.durable = dict(node.entries)

        self._op("fsync_dir", lambda: FileOps.fsync_dir(self, path), model)

    def fsync_all(self, files: Any, dirs: Any = ()) -> list[OSError | None]:
        """One by one, in order: the count of operations must not depend on threads (the
        real ones run at once; any subset of them done before a crash is a prefix of
        some order, and nothing is committed until all are done)."""
        for path in files:
            self.fsync_file(path)
        for path in dirs:
            self.fsync_dir(path)
        return [None] * (len(files) + len(dirs))

    def rename(self, src: Path, dst: Path) -> None:
        def model() -> None:
            src_parent, src_name = self._parent(src)
            dst_parent, dst_name = self._parent(dst)
            dst_parent.entries[dst_name] = src_parent.entries.pop(src_name)

        self._op("rename", lambda: FileOps.rename(self, src, dst), model)

    def remove_tree(self, path: Path) -> None:
        def model() -> None:
            parent, name = self._parent(path)
            del parent.entries[name]

        self._op("remove_tree", lambda: FileOps.remove_tree(self, path), model)

    def remove_file(self, path: Path) -> None:
        def model() -> None:
            parent, name = self._parent(path)
            del parent.entries[name]

        self._op("remove_file", lambda: FileOps.remove_file(self, path), model)

    def remove_tree_later(self, path: Path) -> None:
        self.remove_tree(path)  # at once: the count of operations must not depend on a thread

    def materialize(self, target: Path, mode: str = "strict") -> None:
        """Write what survives a power cut now into `target`.

        strict: only fsynced directory entries and file data survive.
        metadata: every name change survives (as if the journal committed it), but
            file data only where it was fsynced; unsynced files come back empty.
        """
        target.mkdir(parents=True)

        def write(node: _Dir, path: Path) -> None:
            entries = node.durable if mode == "strict" else node.entries
            for name, child in entries.items():
                if isinstance(child, _Dir):
                    (path / name).mkdir()
                    write(child, path / name)
                else:
                    (path / name).write_bytes(child.durable or b"")

        write(self.tree, target)


class NoSpaceOps(FileOps):
    """Writes fail with ENOSPC after `budget` bytes, like a full disk."""

    def __init__(self, budget: int = 0) -> None:
        self.budget = budget

    def write_file(self, path: Path, write: Writer) -> None:
        ops = self

        class Full:
            def __init__(self, file: Any) -> None:
                self.file = file

            def write(self, data: bytes) -> int:
                if len(data) > ops.budget:
                    raise OSError(28, os.strerror(28))
                ops.budget -= len(data)
                return self.file.write(data)

            def flush(self) -> None:
                self.file.flush()

        super().write_file(path, lambda file: write(Full(file)))


@dataclass
class Run:
    returncode: int
    lines: list[str] = field(default_factory=list)
    stderr: str = ""


def run_script(args: list[str], *, env: dict[str, str] | None = None,
               kill_on: str | None = None, sig: int = signal.SIGKILL,
               then: tuple[str, int] | None = None, timeout: float = 120) -> Run:
    """Run train_script.py; on the first stdout line starting with `kill_on`, send
    `sig` to its process group (and `then[1]` on the line starting with `then[0]`)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, start_new_session=True)
    lines: list[str] = []
    waiting = [(kill_on, sig)] if kill_on else []
    if then:
        waiting.append(then)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if waiting and line.startswith(waiting[0][0]):
                os.killpg(proc.pid, waiting.pop(0)[1])
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.stderr is not None
    return Run(proc.returncode, lines, proc.stderr.read())


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Recursively equal, tensors by torch.equal (bit-exact)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)} differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def trainer_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog wired to the library's logger (which does not propagate to root)."""
    logger = logging.getLogger("trainsup.trainer")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="trainsup.trainer")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def helpers() -> Any:
    class Helpers:
        PowerLossModel = PowerLossModel
        SimulatedCrash = SimulatedCrash
        NoSpaceOps = NoSpaceOps
        run_script = staticmethod(run_script)
        assert_same = staticmethod(assert_same)

    return Helpers


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run every interrupted one must match bit for bit."""
    tmp = tmp_path_factory.mktemp("reference")
    run = run_script(["--checkpoint-dir", str(tmp / "ckpt"), "--out", str(tmp / "final.pt")])
    assert run.returncode == 0, run.stderr
    return {"final": torch.load(tmp / "final.pt", weights_only=True), "checkpoint_dir": tmp / "ckpt"}
