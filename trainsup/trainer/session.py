"""`Session`: the object a training script wraps its loop with.

    with Session(model, optimizer, scheduler, saving=Saving(every_steps=500)) as session:
        for epoch in session.epochs(args.epochs):
            for step in session.steps(loader):
                for x, y in step:
                    (loss_fn(model(x), y) / len(step)).backward()
                optimizer.step(); optimizer.zero_grad(); scheduler.step()
                session.step_done(loss=loss.item())

The session resumes from the newest valid checkpoint on entry, tells the loop where to
start (epoch, step, sample inside the epoch), saves when due, writes heartbeats, and
turns SIGTERM/SIGINT/SIGUSR1 into "checkpoint, then exit 75" at the next step boundary.
Under `torch.distributed` (torchrun) rank 0 writes every checkpoint while the other ranks
wait on a barrier, every rank loads the same one, and a stop seen by any rank stops all.
The options come in small frozen objects: `Saving` (when), `Retention` (what stays, and
which checkpoint is best), `Batch` (the micro-batch and accumulation in force), `Snapshots`
(in-memory snapshots between disk saves, `trainsup.trainer.snapshot`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from trainsup.batch import Batch
from trainsup.contracts import EXIT_PREEMPTED, Phase, parse_step_dir
from trainsup.errors import TrainsupError
from trainsup.integrations.runtime import end_gloo_group_at_exit
from trainsup.trainer import rng, statefile
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir, Retention, Skipped
from trainsup.trainer.environment import TrainerEnv
from trainsup.trainer.errors import CheckpointSaveError, LoopUsageError, OptionError, TrainerError
from trainsup.trainer.fsops import FileOps, make_dirs, wait_for_removals
from trainsup.trainer.heartbeat import HeartbeatWriter, SampleRate, max_memory_bytes
from trainsup.trainer.lock import DirLock
from trainsup.textlog import get_logger
from trainsup.trainer.outcome import exit_for_error, is_out_of_memory, one_line, write_exit_info
from trainsup.trainer.ownership import check_checkpoint_dir
from trainsup.trainer.resume import (
    Resume,
    Resumed,
    apply as apply_state,
    check_epochs,
    check_resume,
    init_source,
    init_weights,
    record,
    restore_rng,
    resume_from,
    set_aside_newer,
)
from trainsup.trainer.sampler import ResumableSampler
from trainsup.trainer.saving import Saver, Saving
from trainsup.trainer.snapshot import Snapshots, Snapshotter
from trainsup.trainer.stackdump import register_stack_dumps
from trainsup.trainer.statefile import STATE_FILE, Components
from trainsup.trainer.step import Step
from trainsup.trainer.stop import StopSignals

log = get_logger()
# Errors that end the run with one sentence on stderr and exit 1; exit.json says "error"
# or, when the error's class says `restartable = False`, "config_error".
_ONE_LINE_ERRORS = TrainsupError  # TrainerError, and trainsup.batch.BatchError


class Session:
    def __init__(
        self,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        *,
        extra: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None,
        saving: Saving = Saving(),
        retention: Retention = Retention(),
        resume: Resume = "latest",
        batch: Batch | None = None,
        device: torch.device | str | None = None,
        ops: FileOps | None = None,
        handle_signals: bool = True,
        environ: Mapping[str, str] | None = None,
        init_from: str | Path | None = None,
        allow_shared_dir: bool | None = None,
        snapshots: Snapshots = Snapshots(),
    ) -> None:
        """Wrap a training loop; nothing touches the disk before `start()` (or `with`).

        `checkpoint_dir` defaults to `TRAINSUP_CHECKPOINT_DIR`; `resume="best"` ranks by
        `retention.metric` (first attempt only); `batch` is e.g. `Batch.from_env(64, 2)`;
        `ops` is the file-system seam of every save; `environ` replaces `os.environ`.
        `init_from` ("best:<dir>", "latest:<dir>" or a `step-…` directory) starts a new run
        from that checkpoint's model weights only, with a fresh optimizer, when
        `checkpoint_dir` has no checkpoint to resume; the manifests record it as `origin`.
        `allow_shared_dir` (default: `TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR=1`) accepts a
        checkpoint dir, and checkpoints, that other users own or can write; without it the
        session refuses them (`UnsafeCheckpointDirError`, see `trainsup.trainer.ownership`).
        `snapshots`: in-memory snapshots between disk saves, used on a restart in the same
        boot when newer than every disk checkpoint (`TRAINSUP_SNAPSHOTS=0` turns them off).

        Raises:
            OptionError: an option that cannot be (also a ValueError), or no checkpoint directory.
        """
        check_resume(resume, retention)
        self.env = TrainerEnv.from_environ(environ)
        self.components = Components(model, optimizer, scheduler, scaler, extra if extra is not None else {})
        self.extra = self.components.extra
        directory = checkpoint_dir if checkpoint_dir is not None else self.env.checkpoint_dir
        if directory is None:
            raise OptionError("No checkpoint directory: pass checkpoint_dir or run under trainsup (TRAINSUP_CHECKPOINT_DIR).")
        self.checkpoint_dir = Path(directory).absolute()
        self.allow_shared_dir = self.env.allow_shared_dir if allow_shared_dir is None else bool(allow_shared_dir)
        self.checkpoints = CheckpointDir(self.checkpoint_dir, ops, retention, shared=self.allow_shared_dir)
        self.saving = saving
        self.resume = resume
        self.batch = batch
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.handle_signals = handle_signals
        self.init_from = init_from
        if init_from is not None:
            source, _ = init_source(init_from, retention)
            if source == self.checkpoint_dir or self.checkpoint_dir in source.parents:
                raise OptionError("init_from must name a checkpoint outside this run's checkpoint_dir.")

        self.epoch = 0
        self.step = 0
        self.position = 0
        self.metrics: dict[str, float] = {}
        self._fresh: set[str] = set()  # metrics reported since the last save: only these go into its manifest
        self.resumed_from: Checkpoint | None = None
        self.total_steps: int | None = None
        self.steps_in_epoch: int | None = None  # the true optimizer steps of this epoch (set by steps())
        self.step_in_epoch = 0  # 0-based index of the current step in the epoch; after the loop, steps_in_epoch

        self._saver = Saver(self.checkpoints, saving, optimizer, release_openmp_workers=self.env.release_openmp_workers)
        self._snapshots = Snapshotter(snapshots, self.checkpoint_dir, self.env.run_dir, environ)
        self._heartbeat = HeartbeatWriter(self.env.heartbeat_dir, self.env.rank)
        self._lock = DirLock(self.checkpoint_dir)
        self._signals = StopSignals()
        self._started = False
        self._started_from: dict[str, Any] = {"select": "fresh", "attempt": self.env.attempt}
        self._pending_rng: dict[str, Any] | None = None
        self._saved_batch: Batch | None = None
        self._iterator_this_epoch = False
        self._consumed = 0
        self._step_open = False
        self._mid_step = False
        self._samples_seen = 0
        self._rate = SampleRate()
        self._num_epochs: int | None = None
        self._phase: Phase = "train"
        self._group: _Group | None = None
        self._world = 1  # the sampler's number of replicas: positions are global samples

    @property
    def _writer(self) -> bool:
        """Whether this process writes checkpoints and run records: rank 0, or the only process."""
        return self._group is None or self._group.rank == 0

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint this run saved or resumed from."""
        return self._saver.last

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> "Session":
        try:
            return self.start()
        except _ONE_LINE_ERRORS as exc:
            self._fail(exc)
            self.close()
            raise SystemExit(1) from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None:
                if self._signals.requested and not self._finished():
                    self._preempt()  # the loop left the block on the stop request: checkpoint, exit 75
                if self.saving.on_exit and self._agreed(self._saver.dirty):
                    self.save(wait=True)
                self._saver.settle(raise_errors=True)
                self._finish()
            elif isinstance(exc, SystemExit):
                self._saver.settle()
            elif isinstance(exc, _ONE_LINE_ERRORS):
                self._saver.settle()
                self._fail(exc)
                raise SystemExit(1) from None
            else:
                self._saver.settle()
                reason = "oom" if is_out_of_memory(exc) else "error"
                write_exit_info(self.env.run_dir, reason, self.step, one_line(exc))
                log.error("%s at step %d: %s", "out of memory" if reason == "oom" else "error", self.step, one_line(exc))
        except _ONE_LINE_ERRORS as error:
            self._fail(error)
            raise SystemExit(1) from None
        finally:
            self.close()
        return False

    def start(self) -> "Session":
        """Lock the directory, install handlers, and load the checkpoint to resume from."""
        if self._started:
            return self
        self._group = _Group.current()
        if self._group is not None:
            end_gloo_group_at_exit()
        make_dirs(self.checkpoint_dir)
        check_checkpoint_dir(self.checkpoint_dir, self.allow_shared_dir)
        if not self.env.supervised and self._writer:
            self._lock.acquire()
        self._started = True
        try:
            register_stack_dumps()
            if self.handle_signals:
                self._signals.install()
            if self._group is not None:
                self._snapshots.off = "not under torch.distributed yet"
            if self._writer:
                self.checkpoints.prepare()
                self._snapshots.start()
                self._resume()
            if self._group is not None:
                self._group.barrier()  # rank 0 has cleaned up and set aside; the others load what it chose
                if not self._writer:
                    self._resume_reader()
                self._group.check_same_start(self.resumed_from.name if self.resumed_from else "fresh")
        except BaseException:
            self.close()
            raise
        self._saver.restart_clock()
        self._saver.attach()
        self._beat("start", force=True)
        return self

    def close(self) -> None:
        if not self._started:
            return
        self._saver.settle()
        self._saver.detach()
        self._snapshots.settle()
        wait_for_removals()  # retention's, while the lock still keeps another run out of the dir
        self._signals.restore()
        self._lock.release()
        self._started = False

    def _fail(self, exc: Exception) -> None:
        exit_for_error(self.env.run_dir, exc, self.step)

    def _finished(self) -> bool:
        """Whether the loop got through every epoch it was given (True when it used no `epochs()`)."""
        return self._num_epochs is None or self.epoch >= self._num_epochs

    def _agreed(self, flag: bool) -> bool:
        """`flag` as rank 0 sees it (the rank that saves), on every rank."""
        return flag if self._group is None else self._group.from_writer(flag)

    def _finish(self) -> None:
        if not self._writer:
            return
        self._snapshots.discard(finished=True)
        where = self.last_checkpoint.name if self.last_checkpoint else "no checkpoint"
        epochs = f", epoch {self.epoch} of {self._num_epochs}" if self._num_epochs is not None else ""
        write_exit_info(self.env.run_dir, "finished", self.step, f"finished at step {self.step}{epochs}; last checkpoint {where}")

    # -- resuming -------------------------------------------------------------

    def _resume(self) -> None:
        skipped: list[Skipped] = []
        latest = self.resume == "latest" or (self.resume == "best" and self.env.attempt > 1)
        snapshot = self._snapshots.newest(skipped) if latest else None
        newest_disk = max((parse_step_dir(p.name) or 0 for p in self.checkpoints.step_dirs()), default=None)
        ahead = snapshot is not None and (newest_disk is None or snapshot.step > newest_disk)
        resumed = None
        if not ahead:
            resumed = resume_from(self.checkpoints, self.resume, self.components, self.device,
                                  attempt=self.env.attempt, skipped=skipped)
        if snapshot is not None and (resumed is None or snapshot.step > resumed.step):
            from_snapshot = self._resume_snapshot(snapshot, resumed, skipped)
            if from_snapshot is not None:
                return
            skipped.append(Skipped(f"snapshot {snapshot.name}", f"{STATE_FILE} cannot be loaded"))
            if ahead:
                resumed = resume_from(self.checkpoints, self.resume, self.components, self.device,
                                      attempt=self.env.attempt, skipped=skipped)
        elif snapshot is not None:
            log.info("in-memory snapshot %s is not used: it is not newer than disk %s", snapshot.name,
                     resumed.checkpoint.name if resumed else "checkpoints")
            skipped.append(Skipped(f"snapshot {snapshot.name}", f"not newer than {resumed.checkpoint.name}"))
        self._snapshots.discard()
        if resumed is None:
            if skipped:  # every checkpoint was broken: say so, and keep later restarts from trying them again
                set_aside_newer(self.checkpoints, None)
            if self.init_from is not None:
                self._init_weights()
            if skipped or self.init_from is not None:
                record(self.env.run_dir, self._started_from, skipped)
            return
        self._apply(resumed)
        set_aside_newer(self.checkpoints, resumed.checkpoint)
        self._started_from = self._with_origin(resumed)
        record(self.env.run_dir, self._started_from, skipped)

    def _resume_snapshot(self, snapshot: Checkpoint, disk: Resumed | None, skipped: list[Skipped]) -> Resumed | None:
        """Load the in-memory `snapshot` (newer than `disk`, the disk checkpoint already loaded, if any)."""
        state = self._snapshots.load(snapshot, self.device)
        if state is None:
            return None
        resumed = apply_state(self.components, snapshot, state, "latest")
        self._apply(resumed)
        self._saver.last = disk.checkpoint if disk is not None else None
        self._saver.dirty = True  # no disk checkpoint holds these steps yet
        set_aside_newer(self.checkpoints, snapshot)
        newest_disk = self.checkpoints.step_dirs()
        than = f"disk {newest_disk[0].name}" if newest_disk else "any disk checkpoint"
        log.info("resumed from in-memory snapshot at step %d, newer than %s", snapshot.step, than)
        origin = snapshot.manifest.started_from.get("origin")
        self._started_from = {"select": "snapshot", "checkpoint": snapshot.name, "step": snapshot.step,
                              "attempt": self.env.attempt, "snapshot": str(snapshot.path),
                              "disk": newest_disk[0].name if newest_disk else None,
                              **({"origin": origin} if origin is not None else {})}
        record(self.env.run_dir, self._started_from, skipped)
        return resumed

    def _init_weights(self) -> None:
        origin = init_weights(self.init_from, self.checkpoints.retention, self.components, self.device)
        self._started_from = {**self._started_from, "origin": origin}

    def _with_origin(self, resumed: Resumed) -> dict[str, Any]:
        """Where this resume started from, keeping the origin of a run begun with `init_from`."""
        started = resumed.started_from(self.env.attempt)
        origin = resumed.checkpoint.manifest.started_from.get("origin")
        if self.init_from is not None and origin is None:
            log.info("init_from is not used: %s resumes from its own %s", self.checkpoint_dir, resumed.checkpoint.name)
        return {**started, "origin": origin} if origin is not None else started

    def _resume_reader(self) -> None:
        """A rank other than 0: load the checkpoint rank 0 chose (now the newest that verifies), touching nothing."""
        if self.resume == "none":
            if self.init_from is not None:
                self._init_weights()
            return
        resumed = resume_from(self.checkpoints, self.resume, self.components, self.device, attempt=self.env.attempt)
        if resumed is not None:
            self._apply(resumed)
            self._started_from = self._with_origin(resumed)
        elif self.init_from is not None:
            self._init_weights()

    def _apply(self, resumed: Resumed) -> None:
        self.step, self.epoch, self.position = resumed.step, resumed.epoch, resumed.position
        self._consumed = self.position
        self._pending_rng = resumed.pending_rng
        ranks = self._pending_rng["states"].get("ranks")
        if self._group is not None and ranks and len(ranks) == self._group.world:
            self._pending_rng = {**self._pending_rng, "states": ranks[self._group.rank]}  # this rank's own RNG
        self._saved_batch = resumed.batch
        self.metrics.update(resumed.checkpoint.manifest.metrics)
        self.resumed_from = self._saver.last = resumed.checkpoint

    # -- the loop -------------------------------------------------------------

    def epochs(self, num_epochs: int) -> Iterator[int]:
        """The epochs still to run; an epoch ends when the loop body returns."""
        self._require_started()
        check_epochs(self.epoch, num_epochs, self.resumed_from)
        self._num_epochs = num_epochs
        self._pending_rng = restore_rng(self._pending_rng, "between_epochs")
        while self.epoch < num_epochs:
            yield self.epoch
            self.epoch += 1
            self.position = self._consumed = 0
            self._iterator_this_epoch = False
            self._saver.dirty = True
            self._boundary(periodic_save=self.saving.every_epoch)

    def steps(self, loader: Any, grad_accum: int | None = None) -> Iterator["Step"]:
        """The optimizer steps left in this epoch, each a group of micro-batches.

        Builds the DataLoader iterator from the saved sample position, and only then
        restores the RNG states (creating an iterator draws from the global RNG).
        """
        self._require_started()
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, ResumableSampler) or loader.batch_size is None:
            raise LoopUsageError(
                "session.steps() needs a DataLoader with batch_size and a trainsup.trainer.ResumableSampler as sampler."
            )
        accum = grad_accum or (self.batch.grad_accum if self.batch else 1)
        self._set_batch(Batch(loader.batch_size, accum))
        micro = loader.batch_size
        sampler.set_epoch(self.epoch)
        sampler.set_start(min(self.position, sampler.total_size))  # global: every rank at the same place
        self._world = sampler.num_replicas
        total = sampler.rank_samples  # this rank's samples in the epoch (all of them without sharding)
        if self._num_epochs:
            self.total_steps = self._num_epochs * -(-total // (micro * accum))  # for the ETA in `trainsup status`
        self._consumed = sampler.rank_start
        epoch_batches = total // micro if loader.drop_last else -(-total // micro)
        self.steps_in_epoch = -(-epoch_batches // accum)
        self.step_in_epoch = min(-(-(self._consumed // micro) // accum), self.steps_in_epoch)
        iterator = iter(loader)
        self._iterator_this_epoch = True
        self._pending_rng = restore_rng(self._pending_rng, "in_epoch")

        def batches_left() -> int:
            left = total - self._consumed
            return left // micro if loader.drop_last else -(-left // micro)

        def pulled() -> None:
            taken = min(micro, total - self._consumed)
            self._consumed += taken
            self._samples_seen += taken
            self._mid_step = True

        while (size := min(accum, batches_left())) > 0:
            step = Step(iterator, size, pulled, index=self.step_in_epoch, of=self.steps_in_epoch)
            self._step_open = True
            yield step
            if step.pulled < step.size:
                raise LoopUsageError("Iterate over every micro-batch of a step before asking for the next step.")
            if self._step_open:
                self.step_done()
            self.step_in_epoch += 1

    def step_done(self, **metrics: Any) -> None:
        """The optimizer step is complete: count it, beat, and save or stop if due."""
        self._require_started()
        self.step += 1
        self.position = self._consumed * self._world
        self._step_open = self._mid_step = False
        self._saver.dirty = True
        self._saver.poll()
        self.report(**metrics)
        self._boundary(periodic_save=self._saver.due_after_step(self.step))

    def report(self, **metrics: Any) -> None:
        """Record metrics for heartbeats and the next checkpoint's manifest."""
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.metrics[key] = float(value)
                self._fresh.add(key)

    def beat(self, phase: Phase = "eval") -> None:
        """A rate-limited heartbeat from inside a long evaluation or data loop."""
        self._phase = phase
        self._beat(phase)

    @property
    def stop_requested(self) -> bool:
        return self._signals.requested is not None

    def _boundary(self, periodic_save: bool) -> None:
        self._phase = "train"
        self._beat("train")
        stop = self._signals.requested is not None
        if self._group is not None:  # one decision for all ranks: a stop on any rank, or a save due on any
            # only the agreed flag counts: a signal landing after the all_reduce waits for the next boundary
            stop, periodic_save = self._group.any(stop, periodic_save)
            if stop and not self._signals.requested:
                self._signals.requested = "a stop on another rank"
        if stop:
            self._preempt()
        elif periodic_save:
            try:
                self.save()
            except CheckpointSaveError as exc:
                log.error("%s Training continues; the next save will try again.", exc)
        elif self._snapshots.due():
            self._snapshots.take(self.step, self._collect(), self._meta())

    def _set_batch(self, batch: Batch) -> None:
        saved = self._saved_batch
        if saved and saved != batch:
            log.info("micro-batch %d x %d accumulation (checkpoint) is now %d x %d; continuing at sample %d of epoch %d",
                     saved.micro, saved.grad_accum, batch.micro, batch.grad_accum, self.position, self.epoch)
            self._saved_batch = None
        self.batch = batch

    # -- saving ---------------------------------------------------------------

    def save(self, *, wait: bool = False) -> Checkpoint | None:
        """Checkpoint now. With `Saving(in_background=True)` (and not `wait`) this copies
        what the optimizer does not own to CPU memory and returns None; the optimizer's
        tensors are copied before its next step (which waits for that), and the save
        becomes durable in the background (`trainsup.trainer.deferred`).

        Raises:
            CheckpointSaveError: the save failed; the previous checkpoint is intact.
        """
        self._require_started()
        if self._mid_step:
            raise LoopUsageError("Save at a step boundary (after step_done), not between the micro-batches of a step.")
        # The heartbeat says "checkpoint" (the daemon's longer hang timeout) only while the
        # loop waits for a save; a background save that starts at once costs no beat (two
        # heartbeat files, ~0.4 ms each, more than the rest of its stall).
        waits = wait or not self._saver.options.in_background or self._saver.in_flight or self._group is not None
        with self._checkpoint_phase(waits):
            self._saver.settle()
            if self._group is None:
                saved = self._saver.save(self.step, self._collect(), self._meta(), wait=wait, fresh=_FRESH)
            else:
                saved = self._save_distributed(wait)
            self._fresh.clear()  # a later save does not inherit them: it was not measured at them
            return saved

    @contextmanager
    def _checkpoint_phase(self, waits: bool) -> Iterator[None]:
        """While the loop waits for a save (`waits`), the heartbeat says "checkpoint": the
        daemon then applies its checkpoint timeout, not the step's."""
        if waits:
            self._beat("checkpoint", force=True)
        try:
            yield
        finally:
            if waits:
                self._beat(self._phase, force=True)

    def _save_distributed(self, wait: bool) -> Checkpoint | None:
        """Every rank calls this at the same step: rank 0 writes (with every rank's RNG
        states) while the others wait on a barrier before and after."""
        assert self._group is not None
        own = rng.capture()
        ranks = self._group.gather(own)
        self._group.barrier()
        try:
            if not self._writer:
                self._saver.dirty = False
                return None
            state = self._collect()
            state["rng"] = {**own, "ranks": ranks}
            return self._saver.save(self.step, state, self._meta(), wait=wait, fresh=_FRESH)
        finally:
            self._group.barrier()

    def wait_for_save(self) -> Checkpoint | None:
        """Block until a background save is durable; return it (None if none was in flight).

        Raises:
            CheckpointSaveError: the background save failed.
        """
        with self._checkpoint_phase(self._saver.in_flight):
            return self._saver.wait()

    def _collect(self) -> dict[str, Any]:
        """The state to save: the components' (sharing the live tensors) and the `_FRESH`
        parts, made here for this save."""
        state = statefile.collect(self.components)
        state["progress"] = {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "rng_point": "in_epoch" if self._iterator_this_epoch else "between_epochs",
        }
        state["rng"] = rng.capture()
        if self.batch is not None:
            state["batch"] = self.batch.as_dict()
        return state

    def _meta(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "torch_version": torch.__version__,
            "created": time.time(),
            "batch": self.batch.as_dict() if self.batch else {},
            "metrics": {key: value for key, value in self.metrics.items() if key in self._fresh},
            "started_from": dict(self._started_from),
            "job": {"id": self.env.job_id, "name": self.env.job_name, "attempt": self.env.attempt},
        }

    def _preempt(self) -> None:
        name = self._signals.requested
        self._saver.settle()
        if self._agreed(self._saver.dirty or self.last_checkpoint is None):
            self.save(wait=True)
        if self._writer:
            self._snapshots.discard(finished=True)  # the disk checkpoint holds this step
        where = self.last_checkpoint.name if self.last_checkpoint else "no checkpoint"
        if not self._writer:
            where = f"of step {self.step} (written by rank 0)"
        if self._writer:
            write_exit_info(self.env.run_dir, "preempted", self.step, f"{name}: checkpoint {where} saved")
        log.info("stopping on %s after checkpoint %s; exit code 75 asks to be resumed", name, where)
        raise SystemExit(EXIT_PREEMPTED)

    # -- heartbeats -----------------------------------------------------------

    def _beat(self, phase: Phase, force: bool = False) -> None:
        if not force and not self._heartbeat.due():
            return
        self._heartbeat.beat(step=self.step, epoch=self.epoch, phase=phase, loss=self.metrics.get("loss"),
                             samples_per_s=self._rate.read(self._samples_seen), max_memory_bytes=max_memory_bytes(),
                             force=force, total_steps=self.total_steps)

    def _require_started(self) -> None:
        if not self._started:
            raise LoopUsageError("Enter the session (with Session(...) as session) before using it.")


_FRESH = frozenset({"progress", "rng", "batch"})  # made by `_collect` for one save: no copy needed


def _device_of(model: torch.nn.Module | None) -> torch.device:
    if model is not None:
        for tensor in model.parameters():
            return tensor.device
    return torch.device("cpu")


class _Group:
    """The initialized `torch.distributed` default group of more than one process."""

    def __init__(self, world: int, rank: int) -> None:
        self.world, self.rank = world, rank

    @classmethod
    def current(cls) -> "_Group | None":
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_world_size(), dist.get_rank())
        return None

    def barrier(self) -> None:
        torch.distributed.barrier()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks (one all_reduce)."""
        tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]

    def from_writer(self, flag: bool) -> bool:
        tensor = torch.tensor([int(flag)], dtype=torch.int32)
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item())

    def gather(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def check_same_start(self, name: str) -> None:
        names = self.gather(name)
        if len(set(names)) != 1:
            raise TrainerError(f"The ranks resumed from different checkpoints: {', '.join(names)}.")
