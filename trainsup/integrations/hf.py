"""The Hugging Face `Trainer` under trainsup: sealed checkpoints, verified resume, graceful stop.

Four lines in a training script (see docs/integrations.md):

    from trainsup.integrations.hf import TrainsupCallback, apply_batch, resume_checkpoint

    apply_batch(training_args)                                    # TRAINSUP_BATCH_SIZE / _GRAD_ACCUM
    trainer = Trainer(..., args=training_args, callbacks=[TrainsupCallback()])
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args.output_dir))

- `TrainsupCallback.on_save` *seals* the `checkpoint-N/` HF has just written: every file
  fsynced, then `manifest.json` (the trainer library's format: size and sha256 of every
  file, step N) written last through a temp file and a rename, then the checkpoint dir
  and the output dir fsynced. A checkpoint without a manifest that verifies was cut
  short (HF writes straight into `checkpoint-N/`) and is never resumed from.
- `resume_checkpoint(output_dir)` returns the newest `checkpoint-N` whose manifest
  verifies; the newer ones that do not are moved into `<output_dir>/quarantine/` (never
  deleted), each with one log line saying why, and `resume.json` tells the supervisor.
- SIGTERM, SIGINT or SIGUSR1 ask for a checkpoint at the next optimizer step; once it is
  sealed training stops and the process exits 75 (`trainsup.contracts.EXIT_PREEMPTED`)
  after writing `exit.json` {"reason": "preempted"}; a normal end writes "finished".
- Heartbeats (step, epoch, loss, samples/s, total steps) go to
  `$TRAINSUP_HEARTBEAT/rank-<RANK>.json`, at most 4 a second.
- An exception that ends the script writes `exit.json`: "oom" for out-of-memory errors
  (`torch.OutOfMemoryError`, "CUDA out of memory"), else "error".

Importing this module needs neither transformers nor torch: `resume_checkpoint`,
`seal_checkpoint` and `apply_batch` work without them; `TrainsupCallback` needs
transformers and says so when it is missing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from trainsup.batch import Batch
from trainsup.contracts import (
    ENV_ATTEMPT,
    ENV_JOB_ID,
    ENV_JOB_NAME,
    EXIT_PREEMPTED,
    HF_CHECKPOINT_PREFIX,
    Phase,
    parse_hf_checkpoint_dir,
)
from trainsup.durable import fsync_dir
from trainsup.integrations.runtime import (
    HEARTBEAT_INTERVAL,
    end_gloo_group_at_exit,
    env_int,
    foreign_entry,
    heartbeats,
    log,
    refuse_foreign_dir,
    rank,
    reject,
    write_exit,
    write_resume_record,
)
from trainsup.manifest import MANIFEST_NAME, InvalidCheckpointError, Manifest, digest_file, verify

if TYPE_CHECKING:
    from trainsup.trainer.fsops import FileOps

__all__ = ["TrainsupCallback", "apply_batch", "checkpoints_of", "resume_checkpoint", "seal_checkpoint"]

_MANIFEST_TEMP = f".{MANIFEST_NAME}.tmp-"


# --- the checkpoints of an output dir --------------------------------------------------------


def checkpoints_of(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The `checkpoint-N` dirs in `output_dir` as (N, path), largest N first (unverified)."""
    root = Path(output_dir)
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(step, Path(e.path)) for e in entries
             if (step := parse_hf_checkpoint_dir(e.name)) is not None and e.is_dir(follow_symlinks=False)]
    return sorted(found, reverse=True)


def check_checkpoint(path: Path, step: int) -> Manifest:
    """The manifest of `checkpoint-<step>` once every file it lists has its size and sha256.

    Raises:
        InvalidCheckpointError: why it must not be loaded, in a few words.
    """
    manifest = verify(path)
    if manifest.step != step:
        raise InvalidCheckpointError(f"the manifest says step {manifest.step}")
    return manifest


def resume_checkpoint(output_dir: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> str | None:
    """The newest `checkpoint-N` in `output_dir` whose manifest verifies, for
    `trainer.train(resume_from_checkpoint=...)`; None when there is none (a fresh start).

    Every newer `checkpoint-N` that does not verify (cut short by a kill or a power cut,
    truncated, bit-flipped, written without `TrainsupCallback`) is moved into
    `<output_dir>/quarantine/` so that neither HF nor a later attempt picks it, and logged
    in one line with the reason. Older ones are left alone. On rank > 0 (torchrun) nothing
    is moved. Under the supervisor `$TRAINSUP_RUN_DIR/resume.json` records the choice.
    """
    env = os.environ if environ is None else environ
    root = Path(output_dir)
    refuse_foreign_dir(root, env)
    skipped: list[dict[str, str]] = []
    chosen: tuple[int, Path] | None = None
    for step, path in checkpoints_of(root):
        if (problem := foreign_entry(path, "dir", env)) is not None:
            skipped.append(reject(root, path, InvalidCheckpointError(problem), move=False))
            continue
        try:
            check_checkpoint(path, step)
        except InvalidCheckpointError as exc:
            skipped.append(reject(root, path, exc, move=rank(env) == 0))
            continue
        chosen = (step, path)
        break
    if chosen is not None:
        log.info("resuming from %s (verified)", chosen[1].name)
    elif skipped:
        log.warning("no checkpoint in %s verifies: starting fresh", root)
    if (chosen is not None or skipped) and rank(env) == 0:
        write_resume_record(chosen[1].name if chosen else None, chosen[0] if chosen else 0, skipped, env)
    return str(chosen[1]) if chosen else None


# --- sealing ---------------------------------------------------------------------------------


def seal_checkpoint(path: str | os.PathLike[str], step: int, meta: Mapping[str, Any] | None = None,
                    *, ops: "FileOps | None" = None) -> Manifest:
    """Make the checkpoint dir `path` durable and verifiable: fsync every file and the dir,
    then write `manifest.json` last (temp file, fsync, rename), fsync the dir and its parent.

    `meta` holds manifest fields other than `step` and `files` (epoch, batch, metrics, job…).
    Subdirectories (sharded DeepSpeed/FSDP states) are fsynced but not listed: the manifest
    format names plain files only.

    Raises:
        OSError: a file could not be read, fsynced or written; the checkpoint stays unsealed.
    """
    if ops is None:
        from trainsup.trainer.fsops import FileOps

        ops = FileOps()
    directory = Path(path)
    files = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(_MANIFEST_TEMP):
            ops.remove_file(Path(entry.path))  # left by a seal that was cut short
        elif entry.name == MANIFEST_NAME or entry.name.startswith("."):
            continue
        elif entry.is_dir(follow_symlinks=False):
            _fsync_tree(Path(entry.path), ops)
            log.warning("%s/%s is a directory: fsynced, but the manifest does not cover it", directory.name, entry.name)
        elif entry.is_file(follow_symlinks=False):
            files[entry.name] = digest_file(Path(entry.path))
            ops.fsync_file(Path(entry.path))
    if not files:
        raise InvalidCheckpointError(f"{directory.name} holds no files to seal")
    ops.fsync_dir(directory)
    fields = {"epoch": 0, "position": 0, "torch_version": _torch_version(), "created": time.time(), **(meta or {})}
    manifest = Manifest(step=step, files=files, **fields)
    temp = directory / f"{_MANIFEST_TEMP}{os.getpid()}"
    ops.write_file(temp, lambda file: file.write(manifest.to_bytes()))
    ops.fsync_file(temp)
    ops.rename(temp, directory / MANIFEST_NAME)
    ops.fsync_dir(directory)
    ops.fsync_dir(directory.parent)
    return manifest


def unseal_checkpoint(path: Path) -> None:
    """Remove the manifest of a checkpoint HF is about to write again (same step), so a
    kill during that write cannot leave old digests over new files that happen to match."""
    manifest = path / MANIFEST_NAME
    if manifest.exists():
        os.unlink(manifest)
        fsync_dir(path)


def _fsync_tree(root: Path, ops: "FileOps") -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            if not os.path.islink(Path(folder) / name):  # never followed: not ours to fsync
                ops.fsync_file(Path(folder) / name)
        ops.fsync_dir(Path(folder))


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return str(getattr(torch, "__version__", "unknown"))


# --- the batch the supervisor asks for --------------------------------------------------------


def apply_batch(args: Any, *, environ: Mapping[str, str] | None = None) -> Batch:
    """Set `args.per_device_train_batch_size` and `args.gradient_accumulation_steps` (a
    `TrainingArguments`) from `TRAINSUP_BATCH_SIZE` / `TRAINSUP_GRAD_ACCUM` /
    `TRAINSUP_GLOBAL_BATCH_SIZE`, the script's values being the defaults. Call it before
    `Trainer(...)`, which reads them when it is built.

    Raises:
        trainsup.batch.BatchError: the variables cannot be (not positive, or they disagree);
            uncaught, it ends the script in one sentence and `exit.json` "config_error".
    """
    _install_excepthook()
    default = Batch(int(args.per_device_train_batch_size), int(args.gradient_accumulation_steps))
    batch = Batch.from_env(default.micro, default.grad_accum, environ)
    if batch != default:
        log.info("batch from the supervisor: %s (the script says %s)", batch.describe(), default.describe())
    args.per_device_train_batch_size = batch.micro
    args.gradient_accumulation_steps = batch.grad_accum
    return batch


# --- exit.json on an uncaught exception ---------------------------------------------------------


_last_step: list[int | None] = [None]  # the newest step the callback saw, for exit.json from the hook


def _install_excepthook() -> None:
    """An exception that ends the script writes exit.json: "oom" for out of memory, else
    "error"; trainsup errors go to `trainsup.trainer`'s hook (one sentence, "config_error"
    when no restart can fix them). Installed once."""
    try:
        import trainsup.trainer  # noqa: F401  (installs the hook for trainsup errors)
        from trainsup.trainer.outcome import is_out_of_memory, one_line
    except ImportError:  # no torch: nothing here can run out of GPU memory
        return
    from trainsup.errors import TrainsupError

    previous = sys.excepthook
    if getattr(previous, "_trainsup_hf", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, TrainsupError):
            reason = "oom" if is_out_of_memory(exc) else "error"
            write_exit(reason, _last_step[0], one_line(exc))
        previous(kind, exc, tb)

    hook._trainsup_hf = True  # type: ignore[attr-defined]
    sys.excepthook = hook


# --- the callback ---------------------------------------------------------------------------------


class _Hooks:
    """What `TrainsupCallback` does, without the transformers base class."""

    def __init__(self, *, heartbeat_interval: float = HEARTBEAT_INTERVAL, handle_signals: bool = True,
                 ops: "FileOps | None" = None, environ: Mapping[str, str] | None = None) -> None:
        from trainsup.trainer.stop import StopSignals

        self._env = dict(os.environ if environ is None else environ)
        self._ops = ops
        self._handle_signals = handle_signals
        self._beats = heartbeats(self._env, heartbeat_interval)
        self._rate_mark: tuple[float, int] | None = None
        self._loss: float | None = None
        self._signals = StopSignals("will checkpoint at the next step and exit 75")
        self._stop_pending = False  # a save was asked for that stop
        self._preempted_at: int | None = None  # the step whose checkpoint the stop saved
        self._started_from: dict[str, Any] = {}
        self.last_sealed: Path | None = None
        _install_excepthook()
        end_gloo_group_at_exit()

    @property
    def stop_requested(self) -> str | None:
        """The name of the signal that asked to stop (e.g. "SIGTERM"), None before one came."""
        return self._signals.requested

    # -- HF events --------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle_signals:
            self._signals.install()
        if state.global_step:
            self._started_from = {"checkpoint": f"{HF_CHECKPOINT_PREFIX}{state.global_step}", "step": state.global_step}
        _last_step[0] = state.global_step
        self._beat(args, state, "start", force=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _last_step[0] = state.global_step
        if self.stop_requested and not self._stop_pending and state.global_step < state.max_steps:
            control.should_save = True  # HF saves right after this event, then calls on_save
            self._stop_pending = True
        if control.should_save:
            self._before_save(args, state)
        else:
            self._beat(args, state, "train")

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            self._before_save(args, state)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:  # save_strategy="best"
            self._before_save(args, state)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._beat(args, state, "eval")

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            self._loss = float(loss)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        path = Path(args.output_dir) / f"{HF_CHECKPOINT_PREFIX}{step}"
        if args.should_save and path.is_dir():
            try:
                seal_checkpoint(path, step, self._meta(args, state), ops=self._ops)
            except (OSError, InvalidCheckpointError) as exc:
                if self._stop_pending:
                    raise
                log.warning("could not seal %s (%s); it will not be resumed from", path.name, exc)
            else:
                self.last_sealed = path
        if self._stop_pending:
            self._stop_pending = False
            self._preempted_at = step
            control.should_training_stop = True  # set after the save, so trainer_state.json does not carry it
        self._beat(args, state, "train", force=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._signals.restore()
        step = state.global_step
        where = self.last_sealed.name if self.last_sealed else "none"
        if self._preempted_at is not None:
            detail = f"{self.stop_requested}: checkpoint {HF_CHECKPOINT_PREFIX}{self._preempted_at} saved"
            write_exit("preempted", step, detail, self._env)
            log.info("stopping on %s after checkpoint %s%d; exit code 75 asks to be resumed",
                     self.stop_requested, HF_CHECKPOINT_PREFIX, self._preempted_at)
            raise SystemExit(EXIT_PREEMPTED)
        write_exit("finished", step, f"finished at step {step} of {state.max_steps}; last checkpoint {where}",
                   self._env)

    # -- helpers ------------------------------------------------------------------------------------

    def _before_save(self, args: Any, state: Any) -> None:
        path = Path(args.output_dir) / f"{HF_CHECKPOINT_PREFIX}{state.global_step}"
        if args.should_save:
            unseal_checkpoint(path)
        self._beat(args, state, "checkpoint", force=True)

    def _meta(self, args: Any, state: Any) -> dict[str, Any]:
        batch = {"micro": int(args.per_device_train_batch_size), "grad_accum": int(args.gradient_accumulation_steps)}
        batch["global"] = batch["micro"] * batch["grad_accum"] * int(getattr(args, "world_size", 1) or 1)
        return {
            "epoch": int(state.epoch or 0),
            "position": 0,  # HF keeps its data position in trainer_state.json (global_step)
            "batch": batch,
            "metrics": {"loss": self._loss} if self._loss is not None else {},
            "started_from": dict(self._started_from),
            "job": {"id": self._env.get(ENV_JOB_ID), "name": self._env.get(ENV_JOB_NAME),
                    "attempt": env_int(self._env.get(ENV_ATTEMPT), 1)},
        }

    def _beat(self, args: Any, state: Any, phase: Phase, force: bool = False) -> None:
        if self._beats.directory is None or not (force or self._beats.due()):
            return
        from trainsup.trainer.heartbeat import max_memory_bytes

        step = int(state.global_step)
        self._beats.beat(step=step, epoch=int(state.epoch or 0), phase=phase, loss=self._loss, force=True,
                         samples_per_s=self._samples_per_s(args, step, time.monotonic()),
                         max_memory_bytes=max_memory_bytes(), total_steps=int(state.max_steps or 0) or None)

    def _samples_per_s(self, args: Any, step: int, now: float) -> float | None:
        mark, self._rate_mark = self._rate_mark, (now, step)
        if mark is None or now <= mark[0] or step <= mark[1]:
            return None
        per_step = (int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
                    * int(getattr(args, "world_size", 1) or 1))
        return (step - mark[1]) * per_step / (now - mark[0])


try:
    from transformers import TrainerCallback as _TrainerCallback
except ImportError as _missing:  # the helpers above still work
    _TrainerCallback = None
    _MISSING = f"{_missing.__class__.__name__}: {_missing}"


if _TrainerCallback is not None:

    class TrainsupCallback(_Hooks, _TrainerCallback):
        """Seals every `checkpoint-N/`, stops on SIGTERM after a checkpoint (exit 75),
        beats the heartbeat and says in `exit.json` how the run ended. Put it last in
        `callbacks=[...]`: on a stop it exits from `on_train_end`."""

else:

    class TrainsupCallback(_Hooks):  # type: ignore[no-redef]
        """Needs transformers; without it, building one says so."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(f"TrainsupCallback needs transformers, which cannot be imported ({_MISSING})")
