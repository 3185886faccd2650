"""accelerate under trainsup: power-safe, verified `save_state` / `load_state`, exact resume, graceful stop.

A few lines in a training loop (see docs/integrations.md and jobs/accelerate/train.py):

    from trainsup.integrations.accelerate import Checkpoints, batch_from_env, data_position

    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ckpt = Checkpoints(accelerator, output_dir, save_every=100, total_steps=steps)
    step = ckpt.load() or 0                                    # newest verified checkpoint-N, or 0
    epoch, skip = data_position(step, len(loader))
    while step < steps:
        loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            ...; optimizer.step(); step += 1
            ckpt.step_end(step, loss=loss.item(), epoch=epoch)  # heartbeat, save every N, stop → exit 75
            if step == steps: break
        epoch, skip = epoch + 1, 0
    ckpt.finish(step)

- `save_state(accelerator, output_dir, step)`: every process calls `accelerator.save_state`
  into `<output_dir>/.tmp-checkpoint-<step>-<pid>` (pid of the main process); the main
  process then seals it (`trainsup.integrations.hf.seal_checkpoint`: every file fsynced,
  `manifest.json` written last), renames it to `checkpoint-<step>` and fsyncs
  `output_dir`; `accelerator.wait_for_everyone()` before and after. A kill or power cut
  at any instant leaves the previous checkpoint or the new one, never neither.
- `load_state(accelerator, output_dir)`: the main process picks the newest
  `checkpoint-<step>` whose manifest verifies (newer ones that do not are moved into
  `<output_dir>/quarantine/` (`runtime.reject`), leftover temp dirs are removed,
  `$TRAINSUP_RUN_DIR/resume.json` records the choice) and broadcasts it; every process
  passes it to `accelerator.load_state`. Returns the step, None for a fresh start.
- The data position: accelerate restores the RNG states and, with
  `use_seedable_sampler=True`, the shuffling sampler (seeded by seed + epoch, saved as
  `sampler.bin`); the loop puts itself back at the step with `data_position` and
  `accelerator.skip_first_batches`. The result is bit-exact (tested: weights and
  optimizer state `torch.equal` to an uninterrupted run).
- SIGTERM, SIGINT and SIGUSR1 only set a flag; `maybe_stop(step)` (called by `step_end`)
  saves `checkpoint-<step>`, writes `exit.json` "preempted" and exits 75. With several
  processes the flag is reduced over all of them at every step, so a signal that reached
  one process stops all at the same step.

Importing this module needs neither accelerate nor torch.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainsup.batch import Batch
from trainsup.contracts import ENV_ATTEMPT, ENV_JOB_ID, ENV_JOB_NAME, EXIT_PREEMPTED, HF_CHECKPOINT_PREFIX, Phase
from trainsup.integrations.runtime import (
    HEARTBEAT_INTERVAL,
    end_gloo_group_at_exit,
    env_int,
    foreign_entry,
    heartbeats,
    log,
    refuse_foreign_dir,
    reject,
    write_exit,
    write_resume_record,
)
from trainsup.manifest import InvalidCheckpointError

if TYPE_CHECKING:
    from trainsup.trainer.fsops import FileOps

__all__ = ["Checkpoints", "batch_from_env", "data_position", "epoch_batches", "load_state", "save_state"]

TEMP_PREFIX = f".tmp-{HF_CHECKPOINT_PREFIX}"
_TEMP_NAME = re.compile(r"\.tmp-checkpoint-\d+-\d+")


def batch_from_env(micro: int, accum: int = 1, *, environ: Mapping[str, str] | None = None) -> Batch:
    """The batch in force: `micro` × `accum`, or the supervisor's `TRAINSUP_BATCH_SIZE` /
    `TRAINSUP_GRAD_ACCUM` / `TRAINSUP_GLOBAL_BATCH_SIZE` (same global batch) after a CUDA OOM.
    Use `.micro` for the DataLoader's `batch_size` and `.grad_accum` for
    `Accelerator(gradient_accumulation_steps=...)`.

    Raises:
        trainsup.batch.BatchError: a variable is not a positive whole number, or they disagree.
    """
    return Batch.from_env(micro, accum, environ)


def data_position(step: int, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches to skip in it) for a loop that makes one optimizer step per batch of a
    loader with `batches_per_epoch` batches (`len(loader)` of the prepared loader, taken
    before any `skip_first_batches`). With gradient accumulation pass `step * accum` batches
    as `step` or count batches instead of steps."""
    if batches_per_epoch <= 0:
        raise ValueError("batches_per_epoch must be positive")
    return divmod(step, batches_per_epoch)


def epoch_batches(accelerator: Any, loader: Any, epoch: int, skip: int = 0) -> Any:
    """The batches of `epoch` from the prepared `loader`, the first `skip` left out, exactly
    as an uninterrupted run sees them: `loader.set_epoch(epoch)` (the seedable sampler's
    shuffle for that epoch), then `accelerator.skip_first_batches(loader, skip)` when
    `skip`. Creating a DataLoader iterator draws a seed from torch's global RNG; an
    uninterrupted run drew it at the start of the epoch, before the state the checkpoint
    restored, so for a resumed epoch the draw is undone (the RNG state is put back after
    the iterator is made) and dropout & co. go on with the same random numbers."""
    loader.set_epoch(epoch)
    if not skip:
        return loader
    return _RngNeutral(accelerator.skip_first_batches(loader, skip))


class _RngNeutral:
    """An iterable over `loader` that leaves torch's CPU RNG as it found it when it makes
    the iterator (and fetches the first batch)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        import torch

        state = torch.get_rng_state()
        iterator = iter(self.loader)
        try:
            first = next(iterator)  # accelerate's loaders make the DataLoader iterator on the first next()
        except StopIteration:
            return
        finally:
            torch.set_rng_state(state)
        yield first
        yield from iterator

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


# --- save -----------------------------------------------------------------------------------------


def _from_main(accelerator: Any, value: Any) -> Any:
    """The main process's `value`, on every process (a broadcast when there are several)."""
    if getattr(accelerator, "num_processes", 1) > 1:
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        value = box[0]
    return value


def _main_pid(accelerator: Any) -> int:
    return int(_from_main(accelerator, os.getpid()))


def save_state(accelerator: Any, output_dir: str | os.PathLike[str], step: int, *,
               meta: Mapping[str, Any] | None = None, ops: "FileOps | None" = None) -> Path:
    """`accelerator.save_state` made power-safe: written into `.tmp-checkpoint-<step>-<pid>`,
    sealed (files fsynced, manifest last), renamed to `checkpoint-<step>`, `output_dir`
    fsynced. Call it on every process (accelerate saves each process's RNG state).
    Returns the checkpoint's path.

    A `checkpoint-<step>` that already exists and verifies is kept (it is the state this
    step was resumed from); one that does not is moved into `quarantine/` first.
    """
    from trainsup.integrations.hf import check_checkpoint, seal_checkpoint

    if ops is None:
        from trainsup.trainer.fsops import FileOps

        ops = FileOps()
    root = Path(output_dir)
    final = root / f"{HF_CHECKPOINT_PREFIX}{step}"
    main = bool(getattr(accelerator, "is_main_process", True))
    if main:
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    temp = root / f"{TEMP_PREFIX}{step}-{_main_pid(accelerator)}"
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if main:
        try:
            seal_checkpoint(temp, step, meta, ops=ops)
            if final.exists():
                try:
                    check_checkpoint(final, step)
                except InvalidCheckpointError as exc:
                    reject(root, final, exc)
                else:
                    ops.remove_tree(temp)
                    temp = final
            if temp != final:
                ops.rename(temp, final)
            ops.fsync_dir(root)
        except Exception:
            if temp != final:
                shutil.rmtree(temp, ignore_errors=True)  # the previous checkpoint stays the newest
            raise
    accelerator.wait_for_everyone()
    return final


# --- load -----------------------------------------------------------------------------------------


def newest_verified(output_dir: str | os.PathLike[str], *, move: bool = True,
                    environ: Mapping[str, str] | None = None) -> tuple[int, Path] | None:
    """The newest `checkpoint-<step>` in `output_dir` whose manifest verifies, as (step, path);
    newer ones that do not are set aside (with `move`), temp dirs left by a cut-short save
    removed, and `resume.json` written. None: nothing verifies (a fresh start)."""
    from trainsup.integrations.hf import check_checkpoint, checkpoints_of

    root = Path(output_dir)
    refuse_foreign_dir(root, environ)
    if move:
        try:
            leftovers = [e.path for e in os.scandir(root) if _TEMP_NAME.fullmatch(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            leftovers = []
        for path in leftovers:
            log.info("removing %s, left by a save that was cut short", os.path.basename(path))
            shutil.rmtree(path, ignore_errors=True)
    skipped: list[dict[str, str]] = []
    chosen: tuple[int, Path] | None = None
    for step, path in checkpoints_of(root):
        if (problem := foreign_entry(path, "dir", environ)) is not None:
            skipped.append(reject(root, path, InvalidCheckpointError(problem), move=False))
            continue
        try:
            check_checkpoint(path, step)
        except InvalidCheckpointError as exc:
            skipped.append(reject(root, path, exc, move=move))
            continue
        chosen = (step, path)
        break
    if chosen is not None:
        log.info("resuming from %s (verified)", chosen[1].name)
    elif skipped:
        log.warning("no checkpoint in %s verifies: starting fresh", root)
    if move and (chosen is not None or skipped):
        write_resume_record(chosen[1].name if chosen else None, chosen[0] if chosen else 0, skipped, environ)
    return chosen


def load_state(accelerator: Any, output_dir: str | os.PathLike[str], *,
               environ: Mapping[str, str] | None = None) -> int | None:
    """Load the newest verified `checkpoint-<step>` of `output_dir` with `accelerator.load_state`
    (model, optimizer, scheduler, RNG states, seedable samplers, registered objects) and
    return its step; None when there is none (a fresh start: nothing is loaded).

    Call it on every process after `accelerator.prepare(...)`. Only the main process looks:
    it verifies, moves broken checkpoints aside and removes temp dirs; the others are told
    which checkpoint it chose and load that one.
    """
    main = bool(getattr(accelerator, "is_main_process", True))
    chosen = newest_verified(output_dir, move=True, environ=environ) if main else None
    step = _from_main(accelerator, chosen[0] if chosen else None)
    if step is None:
        return None
    path = Path(output_dir) / f"{HF_CHECKPOINT_PREFIX}{step}"
    if not main:
        log.info("resuming from %s (verified by the main process)", path.name)
    accelerator.load_state(str(path))
    return int(step)


# --- the loop's companion ---------------------------------------------------------------------------


class Checkpoints:
    """Saves, loads, stops and beats for one accelerate loop over `output_dir`.

    save_every: `step_end` saves every this many steps (None: only at a stop; call `save`).
    total_steps: for the heartbeat.
    samples_per_step: samples in one optimizer step (all processes), for the heartbeat's samples/s.
    handle_signals: install the SIGTERM/SIGINT/SIGUSR1 handlers that ask for a stop.
    """

    def __init__(self, accelerator: Any, output_dir: str | os.PathLike[str], *, save_every: int | None = None,
                 total_steps: int | None = None, samples_per_step: int | None = None, handle_signals: bool = True,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, ops: "FileOps | None" = None,
                 environ: Mapping[str, str] | None = None) -> None:
        from trainsup.integrations.hf import _install_excepthook
        from trainsup.trainer.stop import StopSignals

        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.save_every = save_every
        self.total_steps = total_steps
        self.samples_per_step = samples_per_step
        self._env = dict(os.environ if environ is None else environ)
        self._ops = ops
        self._beats = heartbeats(self._env, heartbeat_interval)
        self._signals = StopSignals("will checkpoint at the next step and exit 75")
        if handle_signals:
            self._signals.install()
        self._started_from: dict[str, Any] = {}
        self._loss: float | None = None
        self._rate_mark: tuple[float, int] | None = None
        self.last_saved: Path | None = None
        self.last_saved_step: int | None = None
        _install_excepthook()
        end_gloo_group_at_exit()

    @property
    def stop_requested(self) -> str | None:
        """The name of the signal that asked to stop (e.g. "SIGTERM"), None before one came."""
        return self._signals.requested

    def load(self) -> int | None:
        """`load_state`: the step of the checkpoint loaded, None for a fresh start."""
        step = load_state(self.accelerator, self.output_dir, environ=self._env)
        if step is not None:
            self._started_from = {"checkpoint": f"{HF_CHECKPOINT_PREFIX}{step}", "step": step}
            self.last_saved, self.last_saved_step = self.output_dir / f"{HF_CHECKPOINT_PREFIX}{step}", step
        self._set_last(step)
        self._beat(step or 0, None, "start", force=True)
        return step

    def save(self, step: int, *, epoch: int = 0) -> Path:
        """`save_state` of this step, with the manifest's batch, loss, job and origin."""
        self._beat(step, epoch, "checkpoint", force=True)
        path = save_state(self.accelerator, self.output_dir, step, meta=self._meta(epoch), ops=self._ops)
        self.last_saved, self.last_saved_step = path, step
        return path

    def should_stop(self) -> bool:
        """A stop was asked for (on any process, when there are several: a collective call)."""
        requested = self.stop_requested is not None
        if getattr(self.accelerator, "num_processes", 1) > 1:
            import torch

            flag = torch.tensor([1 if requested else 0], device=self.accelerator.device)
            requested = bool(self.accelerator.reduce(flag, reduction="sum").item())
            if requested and self._signals.requested is None:
                self._signals.requested = "a stop on another process"
        return requested

    def maybe_stop(self, step: int, *, epoch: int = 0) -> None:
        """At a step boundary: when a stop was asked for, save `checkpoint-<step>` (unless it
        is already the last one saved), write `exit.json` "preempted" and exit 75."""
        if not self.should_stop():
            return
        if self.last_saved_step != step:
            self.save(step, epoch=epoch)
        detail = f"{self.stop_requested or 'stop'}: checkpoint {HF_CHECKPOINT_PREFIX}{step} saved"
        if getattr(self.accelerator, "is_main_process", True):
            write_exit("preempted", step, detail, self._env)
        if getattr(self.accelerator, "num_processes", 1) > 1:
            # The first process to exit makes the launcher SIGTERM the others: none may go
            # before exit.json is written, which is how the daemon reads the launcher's exit 1.
            self.accelerator.wait_for_everyone()
        log.info("stopping on %s after checkpoint %s%d; exit code 75 asks to be resumed",
                 self.stop_requested, HF_CHECKPOINT_PREFIX, step)
        self._signals.restore()
        raise SystemExit(EXIT_PREEMPTED)

    def step_end(self, step: int, *, loss: float | None = None, epoch: int = 0) -> None:
        """After optimizer step `step`: heartbeat, a save every `save_every` steps, then `maybe_stop`."""
        self._set_last(step)
        if loss is not None:
            self._loss = float(loss)
        if self.save_every and step % self.save_every == 0:
            self.save(step, epoch=epoch)
        self._beat(step, epoch, "train")
        self.maybe_stop(step, epoch=epoch)

    def finish(self, step: int) -> None:
        """The loop ended normally: `exit.json` "finished", the signal handlers put back."""
        self._signals.restore()
        self._beat(step, None, "train", force=True)
        where = self.last_saved.name if self.last_saved else "none"
        if getattr(self.accelerator, "is_main_process", True):
            write_exit("finished", step, f"finished at step {step}; last checkpoint {where}", self._env)

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _set_last(step: int | None) -> None:
        from trainsup.integrations import hf

        hf._last_step[0] = step

    def _meta(self, epoch: int) -> dict[str, Any]:
        accum = int(getattr(self.accelerator, "gradient_accumulation_steps", 1) or 1)
        return {
            "epoch": int(epoch),
            "position": 0,  # accelerate keeps the data position: RNG states and sampler.bin
            "batch": {"grad_accum": accum, "processes": int(getattr(self.accelerator, "num_processes", 1))},
            "metrics": {"loss": self._loss} if self._loss is not None else {},
            "started_from": dict(self._started_from),
            "job": {"id": self._env.get(ENV_JOB_ID), "name": self._env.get(ENV_JOB_NAME),
                    "attempt": env_int(self._env.get(ENV_ATTEMPT), 1)},
        }

    def _beat(self, step: int, epoch: int | None, phase: "Phase", force: bool = False) -> None:
        if self._beats.directory is None or not (force or self._beats.due()):
            return
        from trainsup.trainer.heartbeat import max_memory_bytes

        now = time.monotonic()
        mark, self._rate_mark = self._rate_mark, (now, step)
        rate = None
        if self.samples_per_step and mark and now > mark[0] and step > mark[1]:
            rate = (step - mark[1]) * self.samples_per_step / (now - mark[0])
        self._beats.beat(step=step, epoch=int(epoch or 0), phase=phase, loss=self._loss, force=True,
                         samples_per_s=rate, max_memory_bytes=max_memory_bytes(), total_steps=self.total_steps)
