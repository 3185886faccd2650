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

The save protocol, and why a crash at any instant leaves the old or the new checkpoint
loadable: `trainsup.integrations.sidecar`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainsup.batch import Batch
from trainsup.contracts import ENV_CHECKPOINT_DIR, EXIT_PREEMPTED, Phase
from trainsup.durable import fsync_dir
from trainsup.integrations.runtime import (
    end_gloo_group_at_exit,
    foreign_entry,
    heartbeats,
    log,
    refuse_foreign_dir,
    reject,
    write_exit,
    write_resume_record,
)
from trainsup.integrations.sidecar import (
    MANIFEST_SUFFIX,
    UnverifiedCheckpointError,
    clean_leftovers,
    int_or_none,
    manifest_path,
    read_entries,
    save_checkpoint_file,
    verify_checkpoint,
)

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

_STEP_IN_NAME = re.compile(r"step=(\d+)")
_STOP_NAME = re.compile(r"stop-step=(\d+)\.ckpt")


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
    refuse_foreign_dir(root)
    if not root.is_dir():
        if write_record:
            write_resume_record(None, None, [])
        return None
    clean_leftovers(root)
    skipped: list[dict[str, str]] = []
    chosen: Path | None = None
    chosen_step: int | None = None
    for path in _newest_first(root):
        if (problem := foreign_entry(path, "file")) is not None:
            skipped.append(reject(root, path, UnverifiedCheckpointError(problem), move=False))
            continue
        try:
            entry = verify_checkpoint(path)
        except UnverifiedCheckpointError as exc:
            skipped.append(reject(root, path, exc, also=(manifest_path(path),)))
            continue
        chosen, chosen_step = path, int_or_none(entry.get("step"))
        break
    if chosen is None:
        log.info("no verified checkpoint in %s: starting fresh", root)
    else:
        log.info("resuming from %s (global step %s, verified)", chosen.name, chosen_step)
    if write_record:
        write_resume_record(chosen.name if chosen else None, chosen_step, skipped)
    return str(chosen) if chosen is not None else None


def _newest_first(root: Path) -> list[Path]:
    ranked = []
    for path in root.glob("*.ckpt"):
        if path.name.startswith(".") or not path.is_file():
            continue
        step: int | None = None
        try:
            steps = [int_or_none(e.get("step")) for e in read_entries(path)]
            step = max((s for s in steps if s is not None), default=None)
        except UnverifiedCheckpointError:
            pass
        if step is None and (match := _STEP_IN_NAME.search(path.name)):
            step = int(match.group(1))
        ranked.append((-1 if step is None else step, path.stat().st_mtime_ns, path.name, path))
    return [path for *_, path in sorted(ranked, reverse=True)]


# --- the batch --------------------------------------------------------------------------


def batch_from_env(micro: int, accum: int = 1) -> Batch:
    """The batch in force: `micro` × `accum`, or the supervisor's `TRAINSUP_BATCH_SIZE` /
    `TRAINSUP_GRAD_ACCUM` (same global batch) after a CUDA OOM. Use `.micro` for the
    DataLoader's `batch_size` and `.grad_accum` for `Trainer(accumulate_grad_batches=...)`.

    Raises:
        trainsup.batch.BatchError: a variable is not a positive whole number, or they disagree.
    """
    return Batch.from_env(micro, accum)


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
    from trainsup.trainer.heartbeat import max_memory_bytes
    from trainsup.trainer.outcome import is_out_of_memory, one_line
    from trainsup.trainer.stop import StopSignals

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
            self._signals = StopSignals(f"will checkpoint after the next training step and exit {exit_code}")
            self._last_step: int | None = None
            self._beats = heartbeats(interval=heartbeat_interval)

        @property
        def requested(self) -> str | None:
            """The name of the signal that asked to stop (e.g. "SIGTERM"), None before one came."""
            return self._signals.requested

        @requested.setter
        def requested(self, name: str | None) -> None:
            self._signals.requested = name

        def _beat(self, trainer: Any, phase: Phase, loss: float | None = None, force: bool = False) -> None:
            if not (force or self._beats.due()):
                return
            self._beats.beat(step=trainer.global_step, epoch=trainer.current_epoch, phase=phase, loss=loss,
                             max_memory_bytes=max_memory_bytes(), total_steps=_total_steps(trainer), force=force)

        def _restore(self) -> None:
            self._signals.restore(only_ours=True)

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
            self._signals.install()
            end_gloo_group_at_exit()  # Lightning itself ends only an NCCL group at exit
            self._last_step = trainer.global_step
            if self.dirpath is None:
                self.dirpath = _default_dirpath(trainer)
            self._beat(trainer, "start", force=True)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            stepped = step != self._last_step
            self._last_step = step
            if self._beats.due():  # the loss is read only for a beat that is written
                self._beat(trainer, "train", loss=_loss_of(outputs))
            if self.requested is None or not stepped:
                return  # never stop inside an accumulation window: its gradients are in no checkpoint
            self._stop(trainer, step)

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                    batch_idx: int, dataloader_idx: int = 0) -> None:
            if not trainer.sanity_checking:
                self._beat(trainer, "eval")

        def _stop(self, trainer: Any, step: int) -> None:
            assert self.dirpath is not None
            path = self.dirpath / f"stop-step={step}.ckpt"
            self._beat(trainer, "checkpoint", force=True)
            trainer.save_checkpoint(str(path))
            if trainer.is_global_zero:
                self._remove_older_stop_checkpoints(trainer, step)
                write_exit("preempted", step, f"checkpointed at global step {step} on {self.requested}")
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
            self._beat(trainer, "train", force=True)
            if trainer.is_global_zero:
                write_exit("finished", step, _why_finished(trainer))

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._restore()
            if not trainer.is_global_zero:
                return
            step = trainer.global_step
            if isinstance(exception, SystemExit):
                if exception.code != self.exit_code and type(exception).__name__ == "SIGTERMException":
                    # Lightning's own SIGTERM path, before training started: nothing was trained.
                    write_exit("preempted", step, "stopped before training started; nothing to save")
                return
            if is_out_of_memory(exception):
                write_exit("oom", step, one_line(exception))

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
