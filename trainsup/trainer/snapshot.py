"""In-memory snapshots between disk checkpoints: a SIGKILL costs about a second of training.

Every `Snapshots.every_seconds` (at a step boundary, when no disk save is due) the session
copies the state a checkpoint would hold to CPU memory and a thread writes it, with the
checkpoint protocol and its manifest of digests, to tmpfs:

    /dev/shm/trainsup-<uid>/<key of the checkpoint dir>/step-…/   state.pt, snapshot.json, manifest.json

`snapshot.json` (covered by the manifest) names the boot, the checkpoint dir and the dir's
`.snapshot-id` token. On start a snapshot is used only when it verifies, was taken in
this boot, belongs to this very checkpoint dir (a dir deleted and made again has a new
token) and is newer than every disk checkpoint; a power cut empties tmpfs and changes
the boot id, so the disk checkpoint is used. A state larger than the memory budget is
not snapshotted (said once in the log and in `$TRAINSUP_RUN_DIR/snapshots.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from trainsup.contracts import SNAPSHOTS_FILE, boot_id_path
from trainsup.diskspace import free_bytes
from trainsup.durable import write_json_atomic
from trainsup.textlog import get_logger
from trainsup.trainer import statefile
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir, Skipped
from trainsup.trainer.errors import OptionError
from trainsup.trainer.fsops import FileOps
from trainsup.trainer.statefile import STATE_FILE

log = get_logger()
ENV_SNAPSHOTS = "TRAINSUP_SNAPSHOTS"  # off (0/false/no): none, whatever the script asks; on; or every N s
SHM = Path("/dev/shm")
INFO_FILE = "snapshot.json"
TOKEN_FILE = ".snapshot-id"
STATUS_FILE = SNAPSHOTS_FILE  # in $TRAINSUP_RUN_DIR: whether snapshots are on, and why not
DEFAULT_BUDGET = 2 << 30


@dataclass(frozen=True)
class Snapshots:
    """In-memory snapshots between disk saves (on by default; `Snapshots(enabled=False)` or
    `TRAINSUP_SNAPSHOTS=0` turns them off).

    `budget_bytes`: the largest state snapshotted (default: a quarter of the free space of
    `root`'s file system, at most 2 GiB). `root`: default `/dev/shm/trainsup-<uid>`.
    `max_overhead`: the interval grows so that copying and writing a snapshot take at most
    this fraction of the time between two (the writing thread shares the GIL with the loop).
    """

    every_seconds: float = 1.0
    budget_bytes: int | None = None
    root: str | Path | None = None
    max_overhead: float = 0.05
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.every_seconds > 0:
            raise OptionError("Snapshots every_seconds must be more than 0.")
        if self.budget_bytes is not None and self.budget_bytes < 0:
            raise OptionError("Snapshots budget_bytes must be 0 or more.")
        if not 0 < self.max_overhead <= 1:
            raise OptionError("Snapshots max_overhead must be more than 0 and at most 1.")


def boot_id() -> str | None:
    """This boot's id, as the daemon reads it (`contracts.boot_id_path`); None if unreadable."""
    try:
        return boot_id_path().read_text().strip() or None
    except OSError:
        return None


def state_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def snapshot_dir(checkpoint_dir: Path, root: Path | None = None) -> Path:
    """Where the snapshots of `checkpoint_dir` live."""
    key = hashlib.sha256(str(Path(checkpoint_dir).absolute()).encode()).hexdigest()[:16]
    return (root or SHM / f"trainsup-{os.getuid()}") / key


def _private_dir(path: Path) -> str | None:
    """Make `path` (mode 0700) if missing; why it must not be used, else None."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"{path} cannot be created ({exc.strerror})"
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return f"{path} is not private to this user"
    return None


class Snapshotter:
    """The snapshots of one checkpoint dir: when to take one, writing it, finding it on start."""

    def __init__(self, options: Snapshots, checkpoint_dir: Path, run_dir: Path | None,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.checkpoint_dir = checkpoint_dir
        self.run_dir = run_dir
        self.root = Path(options.root) if options.root is not None else SHM / f"trainsup-{os.getuid()}"
        self.store = _SnapshotDir(snapshot_dir(checkpoint_dir, self.root), _NoSync())
        self.off: str | None = None
        setting = env.get(ENV_SNAPSHOTS, "").strip().lower()
        if not options.enabled:
            self.off = "turned off (Snapshots(enabled=False))"
        elif setting in ("0", "false", "no", "off"):
            self.off = f"turned off ({ENV_SNAPSHOTS}={env[ENV_SNAPSHOTS]})"
        elif setting and setting not in ("1", "true", "yes", "on"):
            try:  # an interval asked for by name: it grows only while a write takes longer
                options = replace(options, every_seconds=float(setting), max_overhead=1.0)
            except ValueError:
                log.warning("%s=%s is neither off nor a number of seconds; ignored", ENV_SNAPSHOTS, env[ENV_SNAPSHOTS])
        self.options = options
        self.last_step: int | None = None
        self.interval = options.every_seconds
        self._budget: int | None = options.budget_bytes
        self._last = time.monotonic()
        self._worker: threading.Thread | None = None  # one for the run: starting a thread per snapshot stalls the loop
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._write_s = 0.0
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._token: str | None = None
        self._ready = False  # the snapshot dir checked private: only then is anything in it removed

    @property
    def on(self) -> bool:
        return self.off is None

    def start(self) -> None:
        """Check the root (on tmpfs, private) and fix the budget; clean what a kill left."""
        if self.off is None and not self.root.parent.is_dir():
            self.off = f"{self.root.parent} does not exist"
        if self.off is None:
            self.off = _private_dir(self.root) or _private_dir(self.store.root)
        if self.off is None:
            self._ready = True
            self.store.prepare()
            self._remove_orphans()
            if self._budget is None:
                free = free_bytes(self.root)
                self._budget = min(DEFAULT_BUDGET, free // 4) if free is not None else DEFAULT_BUDGET
        self._restart_clock()
        self._write_status()

    def _remove_orphans(self) -> None:
        """Remove the snapshots of checkpoint dirs that no longer exist (a job removed while
        failing, a test's temp dir): nothing else frees their memory before a reboot."""
        for entry in self.root.iterdir():
            if entry == self.store.root or entry.is_symlink() or not entry.is_dir():
                continue
            for info in entry.glob(f"step-*/{INFO_FILE}"):
                try:
                    owner = json.loads(info.read_bytes()).get("checkpoint_dir")
                except (OSError, ValueError, AttributeError):
                    continue
                if isinstance(owner, str) and not os.path.lexists(owner):
                    log.info("removing the in-memory snapshots of %s: it no longer exists", owner)
                    shutil.rmtree(entry, ignore_errors=True)
                break

    def _restart_clock(self) -> None:
        self._last = time.monotonic()

    def due(self) -> bool:
        """Cheap: whether a snapshot should be taken at this step boundary."""
        return self.off is None and time.monotonic() - self._last >= self.interval and self._idle.is_set()

    def take(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Copy `state` to CPU memory now and write it to tmpfs in a thread."""
        self.settle()
        size = state_bytes(state)
        if self._budget is not None and size > self._budget:
            self._turn_off(f"the state ({size / 1e6:.1f} MB) is over the snapshot budget ({self._budget / 1e6:.1f} MB)")
            return
        started = time.monotonic()
        token = self._ensure_token()
        if token is None:
            return
        copy = statefile.snapshot(state, self._buffers)
        if torch.cuda.is_initialized():  # not is_available(): on a CPU-only run it would initialise CUDA (seconds)
            torch.cuda.synchronize()
        copy_s = time.monotonic() - started
        info = json.dumps({"boot_id": boot_id(), "checkpoint_dir": str(self.checkpoint_dir), "token": token,
                           "pid": os.getpid()}).encode()
        files = {STATE_FILE: lambda file: torch.save(copy, file), INFO_FILE: lambda file: file.write(info)}
        self.interval = max(self.options.every_seconds, (copy_s + self._write_s) / self.options.max_overhead)
        self._last = time.monotonic()

        def write() -> None:
            began = time.monotonic()
            try:
                self.store.save(step, files, meta)
                self.last_step = step
            except Exception as exc:  # a snapshot is optional: the next one tries again
                log.warning("in-memory snapshot of step %d failed: %s", step, exc)
            self._write_s = time.monotonic() - began

        self._idle.clear()
        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name="trainsup-snapshot", daemon=True)
            self._worker.start()
        self._work.put(write)

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            try:
                work()
            finally:
                self._idle.set()

    def settle(self) -> None:
        """Wait for the snapshot being written, if any."""
        self._idle.wait()

    def _turn_off(self, why: str) -> None:
        self.off = why
        log.warning("no in-memory snapshots: %s; a kill loses the steps since the last disk checkpoint", why)
        self._write_status()
        self.discard()

    def _write_status(self) -> None:
        if self.run_dir is None:
            return
        payload = {"on": self.off is None, "why_off": self.off, "root": str(self.store.root),
                   "budget_bytes": self._budget, "every_seconds": self.options.every_seconds}
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / STATUS_FILE, payload)
        except OSError as exc:
            log.warning("cannot write %s/%s: %s", self.run_dir, STATUS_FILE, exc.strerror)

    # -- identity of the checkpoint dir ---------------------------------------

    def _read_token(self) -> str | None:
        try:
            fd = os.open(self.checkpoint_dir / TOKEN_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            return file.read(64).decode(errors="replace").strip() or None

    def _ensure_token(self) -> str | None:
        if self._token is None:
            self._token = self._read_token()
        if self._token is None:
            token = uuid.uuid4().hex
            try:
                fd = os.open(self.checkpoint_dir / TOKEN_FILE,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(token.encode())
                self._token = token
            except OSError as exc:
                self._turn_off(f"{self.checkpoint_dir / TOKEN_FILE} cannot be written ({exc.strerror})")
        return self._token

    # -- on start ---------------------------------------------------------------

    def newest(self, skipped: list[Skipped]) -> Checkpoint | None:
        """The newest snapshot valid for this boot and this checkpoint dir; the ones passed
        over are logged and appended to `skipped` (as `snapshot step-…`)."""
        if self.off is not None:
            return None
        rejected: list[Skipped] = []
        found = None
        this_boot, token = boot_id(), self._read_token()
        for checkpoint in self.store.verified(rejected=rejected):
            try:
                info = json.loads((checkpoint.path / INFO_FILE).read_bytes())
            except (OSError, ValueError):
                rejected.append(Skipped(checkpoint.name, f"{INFO_FILE} cannot be read"))
                continue
            if not isinstance(info, dict) or this_boot is None or info.get("boot_id") != this_boot:
                why = "it was taken before a reboot"
            elif info.get("checkpoint_dir") != str(self.checkpoint_dir) or token is None or info.get("token") != token:
                why = "it was taken for another checkpoint dir at this path"
            else:
                found = checkpoint
                break
            log.info("in-memory snapshot %s is not used: %s", checkpoint.name, why)
            rejected.append(Skipped(checkpoint.name, why))
        skipped.extend(Skipped(f"snapshot {s.checkpoint}", s.why) for s in rejected)
        return found

    def load(self, checkpoint: Checkpoint, device: torch.device) -> dict[str, Any] | None:
        try:
            return statefile.load(checkpoint.path / STATE_FILE, device)
        except Exception as exc:
            log.warning("in-memory snapshot %s cannot be loaded (%s); using the disk checkpoints",
                        checkpoint.name, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return None

    def discard(self, *, finished: bool = False) -> None:
        """Remove every snapshot of this checkpoint dir (stale ones; all of them, and their
        dir, once the run `finished` or checkpointed to disk before it exits)."""
        self.settle()
        if not self._ready:
            return
        try:
            if finished:
                self.store.ops.remove_tree(self.store.root)
                self._ready = False
                self.off = self.off or "the run ended"
            else:
                for path in self.store.step_dirs():
                    self.store.ops.remove_tree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the in-memory snapshots in %s: %s", self.store.root, exc.strerror)
        self._buffers.clear()


class _NoSync(FileOps):
    """tmpfs does not outlive the machine: an fsync there buys nothing and costs a system
    call, and O_DIRECT would only add a copy (its pages are the page cache)."""

    direct_io = False

    def fsync_file(self, path: Path) -> None:
        pass

    def fsync_dir(self, path: Path) -> None:
        pass


class _SnapshotDir(CheckpointDir):
    """A `CheckpointDir` on tmpfs that keeps only the newest snapshot, without a log line each second."""

    def apply_retention(self, keep: str) -> None:
        for path in self.step_dirs():
            if path.name != keep:
                self.ops.remove_tree(path)

