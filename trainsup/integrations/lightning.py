"""Lightning under trainsup: power-safe, verified checkpoints and a save at the stop.

A few lines in the training script::

    from trainsup.integrations.lightning import (
        PowerSafeCheckpointIO, TrainsupCallback, batch_from_env, resume_checkpoint)

    batch = batch_from_env(micro=32, accum=2)            # TRAINSUP_BATCH_SIZE / _GRAD_ACCUM
    loader = DataLoader(data, batch_size=batch.micro, shuffle=True)
    ckpt_dir = os.environ.get("TRAINSUP_CHECKPOINT_DIR", "checkpoints")
    trainer = L.Trainer(max_steps=6000, accumulate_grad_batches=batch.grad_accum,
                        plugins=[PowerSafeCheckpointIO()],
                        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=200, save_last=True),
                                   TrainsupCallback(ckpt_dir)])
    trainer.fit(model, loader, ckpt_path=resume_checkpoint(ckpt_dir))

and no `resume:` section in the job file (the script finds its checkpoint itself).

What the script then gets:

- **Power-safe saves** (`PowerSafeCheckpointIO`). Every `*.ckpt` Lightning writes
  (ModelCheckpoint, `last.ckpt`, `trainer.save_checkpoint`) is `torch.save`d into a
  hidden temp file in the same directory while its size and sha256 are measured,
  fsync'd, and committed by rename with a sidecar manifest `<name>.manifest.json`;
  the directory is fsync'd. Lightning's own `TorchCheckpointIO` writes through a temp
  file in `$TMPDIR` and moves it, never fsyncs: after a power cut the newest
  `last.ckpt` can be empty or partly zeros.
- **Verified loads, falling back** (`resume_checkpoint`, `load_checkpoint`). A
  checkpoint is loaded only when its bytes match the manifest; `resume_checkpoint`
  returns the newest one that does (by the global step recorded in its manifest, then
  the file time), and moves each newer broken or unsealed `*.ckpt` into
  `<dirpath>/quarantine/` (never deletes it), with a log line and `resume.json`.
- **A save at the stop** (`TrainsupCallback`). SIGTERM (the daemon's stop and
  `trainsup cancel`), SIGINT and SIGUSR1 are recorded; after the next optimizer step
  (`on_train_batch_end` once `global_step` moved: a stop never lands inside a
  gradient-accumulation window) the callback saves `stop-step=<N>.ckpt` through the
  plugin, writes `exit.json` `{"reason": "preempted", "step": N}` and exits 75, so the
  next attempt goes on at step N + 1: no step is lost. Lightning's own answer to
  SIGTERM (exit 0 at the next step, no save) is switched off while training runs.
- **Heartbeats**: `$TRAINSUP_HEARTBEAT/rank-<global_rank>.json` with the global step,
  epoch, loss and `max_steps` as the total, at most 4 a second; `trainsup status`
  shows progress and an ETA, and `heartbeat.timeout` can detect a hang.
- **exit.json**: `finished` when `fit` returns normally (max_steps, max_epochs, early
  stopping or max_time), so a daemon stop landing at the very end is not replayed;
  `oom` on a CUDA out-of-memory error, so the daemon retries with a smaller micro-batch.
- **Batch backoff**: `batch_from_env(micro, accum)` returns the `trainsup.batch.Batch`
  in force: the script's defaults, or after a CUDA OOM the daemon's smaller micro-batch
  with more accumulation steps (same global batch). Apply `batch.micro` to the
  DataLoader's `batch_size` and `batch.grad_accum` to `accumulate_grad_batches`;
  trainsup cannot reach into a DataLoader the script builds, so nothing is applied
  behind the script's back.

What it does not get:

- **Bit-exact resume.** Lightning restores the model, optimizers, schedulers, loop
  counters and callback states, but not the position of a plain DataLoader inside an
  epoch nor the RNG states: after a mid-epoch resume the rest of the epoch sees other
  batches than an uninterrupted run would. The global step is right; the weights
  differ (measured on the CPU MLP of jobs/lightning, 60 steps: max abs difference
  0.04-0.05 after a daemon stop or 3 SIGKILLs). Even a resume exactly at an epoch
  boundary differs when the DataLoader shuffles with a seeded generator: the
  generator starts again from its seed instead of from its state at that epoch.
- A stop that arrives before training starts (during setup, checkpoint restore or the
  sanity-check validation) still goes through Lightning's SIGTERM path: exit 0
  without a save; nothing was trained yet, and the callback writes `exit.json`
  `preempted` so the attempt is resumed, not taken for finished. A stop during a long
  validation waits for the next training step.
- Only `lightning` (`import lightning`); the `pytorch_lightning` package's Trainer
  does not accept these classes.

Why a crash at any instant leaves the old or the new checkpoint loadable.
A manifest lists the digests (size, sha256, global step, epoch) its checkpoint may
have; a checkpoint is *sealed* when its bytes match one of them. A save of `P` runs:

1. `torch.save` into `.P.tmp-<id>` (same directory), hashing; fsync it.
2. Write the new manifest into `.P.manifest.json.tmp-<id>`: the new digest *and* the
   digest of the `P` on disk now (when `P` exists and is sealed); fsync it.
3. Rename it over `P.manifest.json`; fsync the directory.
4. Rename `.P.tmp-<id>` over `P`; fsync the directory.
5. Rewrite the manifest with the new digest only (same temp/fsync/rename/fsync).

A crash in 1-2 leaves `P` and its manifest untouched (plus temp files, removed by
the next `resume_checkpoint`). After 3 the manifest accepts both the old and the new
bytes, and the directory fsync in 3 makes it durable *before* the rename of 4 is
issued, so whichever of old or new `P` the directory holds after a power cut, its
manifest accepts it: both renames are atomic and ordered. After 4 `P` is the new
file, already fsync'd in 1. Step 5 only trims the manifest; a crash in it leaves a
manifest that still accepts `P`. For a new name (`epoch=0-step=20.ckpt`) there is no
old `P`: a crash between 3 and 4 leaves a manifest without its checkpoint, which is
ignored and removed, and every older checkpoint is untouched. A checkpoint whose
save was torn some other way (written without the plugin, truncated, a bit flipped)
matches no digest and is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

from trainsup.batch import Batch
from trainsup.contracts import (
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_HEARTBEAT,
    ENV_RUN_DIR,
    EXIT_FILE,
    EXIT_PREEMPTED,
    RESUME_FILE,
    Heartbeat,
    TrainerExit,
    write_heartbeat,
)
from trainsup.durable import fsync_dir, write_json_atomic
from trainsup.layouts import QUARANTINE_DIR, quarantine
from trainsup.manifest import FileDigest, HashingWriter, InvalidCheckpointError, digest_file

if TYPE_CHECKING:  # pragma: no cover
    from trainsup.trainer.fsops import FileOps

__all__ = [
    "MANIFEST_SUFFIX",
    "PowerSafeCheckpointIO",
    "TrainsupCallback",
    "UnverifiedCheckpointError",
    "batch_from_env",
    "load_verified",
    "manifest_path",
    "resume_checkpoint",
    "save_checkpoint_file",
    "verify_checkpoint",
]

MANIFEST_SUFFIX = ".manifest.json"
FORMAT = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_STEP_IN_NAME = re.compile(r"step=(\d+)")
_STOP_NAME = re.compile(r"stop-step=(\d+)\.ckpt")
_OOM_PHRASES = ("out of memory", "not enough memory")

log = logging.getLogger("trainsup.integrations.lightning")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("trainsup: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class UnverifiedCheckpointError(InvalidCheckpointError):
    """A `*.ckpt` that must not be loaded: no manifest, or bytes the manifest does not list."""


# --- the manifest -----------------------------------------------------------------------


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar manifest of checkpoint `path`: `<name>.manifest.json` beside it."""
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def _entry(digest: FileDigest, step: int | None, epoch: int | None) -> dict[str, Any]:
    return {"size": digest.size, "sha256": digest.sha256, "step": step, "epoch": epoch, "created": time.time()}


def _manifest_bytes(name: str, entries: list[dict[str, Any]]) -> bytes:
    import torch

    payload = {"format": FORMAT, "file": name, "accepts": entries, "torch_version": torch.__version__}
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def _read_entries(path: Path) -> list[dict[str, Any]]:
    """The digests the manifest of `path` accepts.

    Raises:
        UnverifiedCheckpointError: no manifest, or one that does not parse.
    """
    sidecar = manifest_path(path)
    try:
        raw = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        raise UnverifiedCheckpointError(f"{path.name} has no manifest {sidecar.name}: it was not written "
                                        f"by PowerSafeCheckpointIO, or its save did not finish") from None
    except (OSError, ValueError) as exc:
        raise UnverifiedCheckpointError(f"{sidecar.name} cannot be read ({exc.__class__.__name__})") from None
    try:
        if raw.get("format") != FORMAT:
            raise UnverifiedCheckpointError(f"{sidecar.name} has format {raw.get('format')!r}, not {FORMAT}")
        entries = [dict(e) for e in raw["accepts"]]
        for e in entries:
            int(e["size"]), str(e["sha256"])
        return entries
    except UnverifiedCheckpointError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError):
        raise UnverifiedCheckpointError(f"{sidecar.name} does not parse") from None


def verify_checkpoint(path: str | os.PathLike[str], *, hashes: bool = True) -> dict[str, Any]:
    """The manifest entry (size, sha256, step, epoch) that the bytes of `path` match.

    With `hashes=False` only the size is compared (a `stat`, not a read).

    Raises:
        UnverifiedCheckpointError: missing, no manifest, or its bytes match no entry.
    """
    path = Path(path)
    entries = _read_entries(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnverifiedCheckpointError(f"{path.name} is missing") from None
    sized = [e for e in entries if int(e["size"]) == size]
    if not sized:
        expected = " or ".join(str(e["size"]) for e in entries)
        raise UnverifiedCheckpointError(f"{path.name} has {size} bytes, its manifest says {expected}")
    if not hashes:
        return sized[0]
    try:
        actual = digest_file(path).sha256
    except OSError as exc:
        raise UnverifiedCheckpointError(f"{path.name} cannot be read ({exc.strerror})") from None
    for entry in sized:
        if entry["sha256"] == actual:
            return entry
    raise UnverifiedCheckpointError(f"{path.name} does not match its sha256 in {manifest_path(path).name}")


# --- saving -----------------------------------------------------------------------------


def _default_ops() -> "FileOps":
    from trainsup.trainer.fsops import FileOps

    return FileOps()


def save_checkpoint_file(checkpoint: Any, path: str | os.PathLike[str], ops: "FileOps | None" = None) -> FileDigest:
    """`torch.save(checkpoint)` to `path`, power-safe and sealed by its manifest (see the module doc).

    Raises:
        OSError (or what `torch.save` raises): nothing was committed; the previous `path`
        and its manifest are untouched and still load.
    """
    import torch

    ops = ops or _default_ops()
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = directory / f".{path.name}.tmp-{token}"
    sidecar = manifest_path(path)
    sidecar_temp = directory / f".{sidecar.name}.tmp-{token}"
    meta = checkpoint if isinstance(checkpoint, Mapping) else {}
    step, epoch = _int_or_none(meta.get("global_step")), _int_or_none(meta.get("epoch"))
    measured: list[HashingWriter] = []

    def write(file: BinaryIO) -> None:
        measured.append(HashingWriter(file))
        torch.save(checkpoint, measured[0])  # type: ignore[arg-type]

    try:
        ops.write_file(temp, write)
        ops.fsync_file(temp)
        new = _entry(measured[0].digest(), step, epoch)
        entries = [new, *_entries_of_current(path)]
        ops.write_file(sidecar_temp, lambda file: file.write(_manifest_bytes(path.name, entries)))
        ops.fsync_file(sidecar_temp)
        ops.rename(sidecar_temp, sidecar)
        ops.fsync_dir(directory)
        ops.rename(temp, path)
        ops.fsync_dir(directory)
    except Exception:
        for leftover in (temp, sidecar_temp):
            _remove_quietly(ops, leftover)
        raise
    if len(entries) > 1:  # trim: only the new bytes are accepted from now on
        trim_temp = directory / f".{sidecar.name}.tmp-{token}-trim"
        try:
            ops.write_file(trim_temp, lambda file: file.write(_manifest_bytes(path.name, [new])))
            ops.fsync_file(trim_temp)
            ops.rename(trim_temp, sidecar)
            ops.fsync_dir(directory)
        except Exception as exc:
            _remove_quietly(ops, trim_temp)
            log.warning("%s is saved; its manifest still also accepts the previous bytes (%s)", path.name, exc)
    return measured[0].digest()


def _entries_of_current(path: Path) -> list[dict[str, Any]]:
    """The manifest entry of the `path` on disk now, kept while it is being replaced."""
    if not path.exists():
        return []
    try:
        entries = _read_entries(path)
        # One entry of the right size: trust it without reading a large file. More (a trim
        # interrupted by a crash): hash the file to keep only the one it matches.
        return [verify_checkpoint(path, hashes=len(entries) > 1)]
    except UnverifiedCheckpointError:
        return []  # the file on disk was never loadable; nothing to keep loadable


def _remove_quietly(ops: "FileOps", path: Path) -> None:
    try:
        if os.path.lexists(path):
            ops.remove_file(path)
    except Exception:  # best effort: resume_checkpoint removes it on the next start
        pass


# --- loading and resuming -----------------------------------------------------------------


def load_verified(path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None) -> Any:
    """`torch.load` of a checkpoint whose bytes match its manifest (Lightning's `_load` semantics).

    Raises:
        UnverifiedCheckpointError: the file may be torn or changed; it is not loaded.
    """
    from lightning.fabric.utilities.cloud_io import _load

    verify_checkpoint(path)
    return _load(str(path), map_location=map_location, weights_only=weights_only)


def resume_checkpoint(dirpath: str | os.PathLike[str] | None = None, *, write_record: bool = True) -> str | None:
    """The newest `*.ckpt` in `dirpath` whose bytes match its manifest, for `fit(ckpt_path=...)`.

    `dirpath` defaults to `$TRAINSUP_CHECKPOINT_DIR`. Newest is the largest global step
    in the manifest (for a file without one, `step=N` in its name), then the newest file.
    Every newer `*.ckpt` that does not verify is moved into `<dirpath>/quarantine/`
    with its manifest (never deleted) and logged. Temp files and manifests left by an
    interrupted save are removed. Under trainsup, `$TRAINSUP_RUN_DIR/resume.json` says
    what was chosen and what was set aside. None when no checkpoint verifies (a fresh start).
    """
    if dirpath is None:
        dirpath = os.environ.get(ENV_CHECKPOINT_DIR)
        if not dirpath:
            raise ValueError(f"resume_checkpoint() needs a directory, or {ENV_CHECKPOINT_DIR} set")
    root = Path(dirpath)
    if not root.is_dir():
        _write_resume_record(None, None, [], write_record)
        return None
    _clean_leftovers(root)
    skipped: list[dict[str, str]] = []
    chosen: Path | None = None
    chosen_step: int | None = None
    for path in _newest_first(root):
        try:
            entry = verify_checkpoint(path)
        except UnverifiedCheckpointError as exc:
            where = _set_aside(root, path)
            log.warning("checkpoint %s is not usable: %s; %s, falling back to an older one", path.name, exc, where)
            skipped.append({"checkpoint": path.name, "why": str(exc)})
            continue
        chosen, chosen_step = path, _int_or_none(entry.get("step"))
        break
    if chosen is None:
        log.info("no verified checkpoint in %s: starting fresh", root)
    else:
        log.info("resuming from %s (global step %s, verified)", chosen.name, chosen_step)
    _write_resume_record(chosen, chosen_step, skipped, write_record)
    return str(chosen) if chosen is not None else None


def _newest_first(root: Path) -> list[Path]:
    ranked = []
    for path in root.glob("*.ckpt"):
        if path.name.startswith(".") or not path.is_file():
            continue
        step: int | None = None
        try:
            steps = [_int_or_none(e.get("step")) for e in _read_entries(path)]
            step = max((s for s in steps if s is not None), default=None)
        except UnverifiedCheckpointError:
            pass
        if step is None and (match := _STEP_IN_NAME.search(path.name)):
            step = int(match.group(1))
        ranked.append((-1 if step is None else step, path.stat().st_mtime_ns, path.name, path))
    return [path for *_, path in sorted(ranked, reverse=True)]


def _set_aside(root: Path, path: Path) -> str:
    try:
        target = quarantine(root, path.name)
        if os.path.lexists(manifest_path(path)):
            quarantine(root, manifest_path(path).name)
    except OSError as exc:
        return f"could not move it to {QUARANTINE_DIR}/ ({exc.strerror})"
    return f"moved to {QUARANTINE_DIR}/{target.name if target else path.name}"


def _clean_leftovers(root: Path) -> None:
    """Remove the temp files of interrupted saves, and manifests whose checkpoint never got its name."""
    for entry in root.iterdir():
        name = entry.name
        try:
            if name.startswith(".") and ".tmp-" in name and (".ckpt.tmp-" in name or MANIFEST_SUFFIX + ".tmp-" in name):
                log.info("removing %s left by an interrupted save", name)
                entry.unlink()
            elif name.endswith(".ckpt" + MANIFEST_SUFFIX) and not (root / name[: -len(MANIFEST_SUFFIX)]).exists():
                log.info("removing %s: its checkpoint was never committed", name)
                entry.unlink()
        except OSError as exc:
            log.warning("could not remove %s: %s", name, exc.strerror)


def _write_resume_record(chosen: Path | None, step: int | None, skipped: list[dict[str, str]], enabled: bool) -> None:
    run_dir = os.environ.get(ENV_RUN_DIR)
    if not enabled or not run_dir:
        return
    payload = {"select": "latest" if chosen else "fresh", "checkpoint": chosen.name if chosen else None,
               "step": step or 0, "attempt": _env_int(ENV_ATTEMPT), "skipped": skipped}
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(run_dir) / RESUME_FILE, payload)
    except OSError as exc:
        log.warning("cannot write %s/%s: %s", run_dir, RESUME_FILE, exc.strerror)


# --- the batch --------------------------------------------------------------------------


def batch_from_env(micro: int, accum: int = 1) -> Batch:
    """The batch in force: `micro` × `accum`, or the supervisor's `TRAINSUP_BATCH_SIZE` /
    `TRAINSUP_GRAD_ACCUM` (same global batch) after a CUDA OOM. Use `.micro` for the
    DataLoader's `batch_size` and `.grad_accum` for `Trainer(accumulate_grad_batches=...)`.

    Raises:
        trainsup.batch.BatchError: a variable is not a positive whole number, or they disagree.
    """
    return Batch.from_env(micro, accum)


# --- exit.json and heartbeats -----------------------------------------------------------


def _write_exit(reason: str, step: int | None, detail: str) -> None:
    run_dir = os.environ.get(ENV_RUN_DIR)
    if not run_dir:
        return
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(run_dir) / EXIT_FILE, TrainerExit(reason, step, detail).to_json())
    except OSError as exc:
        log.warning("cannot write %s/%s: %s", run_dir, EXIT_FILE, exc.strerror)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (MemoryError, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


class _Beats:
    """This rank's heartbeat file, rewritten at most every `interval` seconds; a no-op off trainsup."""

    def __init__(self, directory: Path | None, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self.rank = 0
        self._last = float("-inf")
        self._warned = False

    def due(self) -> bool:
        return self.directory is not None and time.monotonic() - self._last >= self.interval

    def beat(self, step: int, epoch: int, phase: str, loss: float | None = None,
             total: int | None = None, force: bool = False) -> None:
        if self.directory is None or not (force or self.due()):
            return
        self._last = time.monotonic()
        memory = None
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                memory = torch.cuda.max_memory_allocated()
        except Exception:
            pass
        record = Heartbeat(rank=self.rank, time=time.time(), step=step, epoch=epoch, phase=phase, pid=os.getpid(),
                           loss=loss, max_memory_bytes=memory, total_steps=total)
        try:
            write_heartbeat(self.directory, record)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write heartbeat in %s: %s", self.directory, exc.strerror or exc)
                self._warned = True


# --- the Lightning classes, built on first use ------------------------------------------

_classes: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in ("PowerSafeCheckpointIO", "TrainsupCallback"):
        if name not in _classes:
            _build_classes()
        return _classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_classes() -> None:
    try:
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.plugins.io import TorchCheckpointIO
    except ImportError as exc:
        raise ImportError("trainsup.integrations.lightning: PowerSafeCheckpointIO and TrainsupCallback need "
                          "Lightning (pip install lightning); resume_checkpoint and batch_from_env do not") from exc

    class PowerSafeCheckpointIO(TorchCheckpointIO):
        """Lightning's `TorchCheckpointIO`, made power-safe and verified (see the module doc).

        `Trainer(plugins=[PowerSafeCheckpointIO()])`. `require_manifest=False` lets
        `load_checkpoint` open a `*.ckpt` that has no manifest at all (one written
        before the plugin was added), unverified; a manifest that disagrees with its
        file is refused either way. `ops` is the file-operation seam the tests use.
        """

        def __init__(self, *, require_manifest: bool = True, ops: "FileOps | None" = None) -> None:
            super().__init__()
            self.require_manifest = require_manifest
            self.ops = ops

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
            if storage_options is not None:
                raise TypeError("PowerSafeCheckpointIO.save_checkpoint takes no storage_options")
            save_checkpoint_file(checkpoint, Path(path), self.ops)

        def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                            weights_only: bool | None = None) -> dict[str, Any]:
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            if not self.require_manifest and not manifest_path(path).exists():
                log.warning("loading %s unverified: it has no manifest", path.name)
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            try:
                verify_checkpoint(path)
            except UnverifiedCheckpointError as exc:
                raise UnverifiedCheckpointError(
                    f"Refusing to load {path}: {exc}. Pass resume_checkpoint(dirpath) as ckpt_path to fall "
                    f"back to the newest checkpoint that verifies.") from None
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

        def remove_checkpoint(self, path: Any) -> None:
            path = Path(path)
            for victim in (path, manifest_path(path)):
                try:
                    victim.unlink()
                except FileNotFoundError:
                    pass
            try:
                fsync_dir(path.parent)
            except OSError:
                pass

    class TrainsupCallback(Callback):
        """Save at the stop and exit 75, heartbeats, and exit.json (see the module doc).

        dirpath: where the stop checkpoint goes (`stop-step=<N>.ckpt`); default
            `$TRAINSUP_CHECKPOINT_DIR`, else the ModelCheckpoint's dirpath, else
            `<default_root_dir>/checkpoints`. Use the directory `resume_checkpoint` reads.
        heartbeat_interval: the least time between two heartbeat writes (0.25 s: ≤ 4/s).
        exit_code: the exit status after the stop checkpoint (75, `EX_TEMPFAIL`).
        """

        def __init__(self, dirpath: str | os.PathLike[str] | None = None, *, heartbeat_interval: float = 0.25,
                     exit_code: int = EXIT_PREEMPTED) -> None:
            super().__init__()
            self.dirpath = Path(dirpath) if dirpath else None
            self.exit_code = exit_code
            self.requested: str | None = None
            self._previous: dict[int, Any] = {}
            self._installed = False
            self._last_step: int | None = None
            heartbeat = os.environ.get(ENV_HEARTBEAT)
            self._beats = _Beats(Path(heartbeat) if heartbeat else None, heartbeat_interval)

        # -- signals --
        def _handle(self, signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.requested is None:
                self.requested = name
                log.info("%s received: will checkpoint after the next training step and exit %d", name,
                         self.exit_code)
            else:
                log.info("%s received again: still finishing the checkpoint", name)

        def _install(self) -> None:
            if self._installed:
                return
            if threading.current_thread() is not threading.main_thread():
                log.warning("not in the main thread: a stop will not checkpoint before exit")
                return
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._installed = True

        def _restore(self) -> None:
            if not self._installed:
                return
            for signum, handler in self._previous.items():
                if signal.getsignal(signum) == self._handle:
                    signal.signal(signum, handler)
            self._previous.clear()
            self._installed = False

        # -- hooks --
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # Lightning installs its SIGTERM handler after on_fit_start; this is the first
            # hook after it, so ours replaces it until on_train_end (Lightning's teardown
            # then puts back what was there before fit).
            self._beats.rank = int(getattr(trainer, "global_rank", 0) or 0)
            connector = getattr(trainer, "_signal_connector", None)
            if getattr(connector, "received_sigterm", False):
                self.requested = self.requested or "SIGTERM"
                connector.received_sigterm = False
            self._install()
            self._last_step = trainer.global_step
            if self.dirpath is None:
                self.dirpath = _default_dirpath(trainer)
            self._beats.beat(trainer.global_step, trainer.current_epoch, "start", total=_total_steps(trainer),
                             force=True)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            stepped = step != self._last_step
            self._last_step = step
            if self._beats.due():
                self._beats.beat(step, trainer.current_epoch, "train", loss=_loss_of(outputs),
                                 total=_total_steps(trainer))
            if self.requested is None or not stepped:
                return  # never stop inside an accumulation window: its gradients are in no checkpoint
            self._stop(trainer, step)

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                    batch_idx: int, dataloader_idx: int = 0) -> None:
            if not trainer.sanity_checking:
                self._beats.beat(trainer.global_step, trainer.current_epoch, "eval", total=_total_steps(trainer))

        def _stop(self, trainer: Any, step: int) -> None:
            assert self.dirpath is not None
            path = self.dirpath / f"stop-step={step}.ckpt"
            self._beats.beat(step, trainer.current_epoch, "checkpoint", total=_total_steps(trainer), force=True)
            trainer.save_checkpoint(str(path))
            if trainer.is_global_zero:
                self._remove_older_stop_checkpoints(trainer, step)
                _write_exit("preempted", step, f"checkpointed at global step {step} on {self.requested}")
            log.info("%s: saved %s at global step %d, exiting %d", self.requested, path.name, step, self.exit_code)
            self._restore()
            raise SystemExit(self.exit_code)

        def _remove_older_stop_checkpoints(self, trainer: Any, step: int) -> None:
            assert self.dirpath is not None
            for old in self.dirpath.glob("stop-step=*.ckpt"):
                match = _STOP_NAME.fullmatch(old.name)
                if match and int(match.group(1)) < step:
                    try:
                        trainer.strategy.remove_checkpoint(str(old))
                    except OSError as exc:
                        log.warning("could not remove %s: %s", old.name, exc.strerror)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._restore()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            step = trainer.global_step
            self._beats.beat(step, trainer.current_epoch, "train", total=_total_steps(trainer), force=True)
            if trainer.is_global_zero:
                _write_exit("finished", step, _why_finished(trainer))

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._restore()
            if not trainer.is_global_zero:
                return
            step = trainer.global_step
            if isinstance(exception, SystemExit):
                if exception.code != self.exit_code and type(exception).__name__ == "SIGTERMException":
                    # Lightning's own SIGTERM path, before training started: nothing was trained.
                    _write_exit("preempted", step, "stopped before training started; nothing to save")
                return
            if _is_out_of_memory(exception):
                _write_exit("oom", step, str(exception).strip().splitlines()[0][:300] if str(exception) else "")

    for cls in (PowerSafeCheckpointIO, TrainsupCallback):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__  # picklable by reference
    _classes["PowerSafeCheckpointIO"] = PowerSafeCheckpointIO
    _classes["TrainsupCallback"] = TrainsupCallback


def _default_dirpath(trainer: Any) -> Path:
    env = os.environ.get(ENV_CHECKPOINT_DIR)
    if env:
        return Path(env)
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


def _total_steps(trainer: Any) -> int | None:
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimated = trainer.estimated_stepping_batches
    except Exception:
        return None
    return int(estimated) if isinstance(estimated, (int, float)) and estimated != float("inf") else None


def _loss_of(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    try:
        value = float(loss.detach()) if hasattr(loss, "detach") else None
    except (TypeError, ValueError, RuntimeError):
        return None
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _why_finished(trainer: Any) -> str:
    step = trainer.global_step
    if trainer.max_steps and trainer.max_steps > 0 and step >= trainer.max_steps:
        return f"fit ended at global step {step} (max_steps)"
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        return f"fit ended at global step {step} after {trainer.current_epoch} epochs (max_epochs)"
    return f"fit ended at global step {step} (stopped early)"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return None

