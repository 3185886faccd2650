"""Choosing, loading and applying the checkpoint a `Session` starts from.

`resume="latest"` takes the newest checkpoint that verifies and loads; `"best"` the one
with the best recorded metric (on the first attempt only, falling back to the latest);
`"none"` sets every checkpoint aside. Checkpoints newer than the chosen one are set
aside too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from trainsup.batch import Batch
from trainsup.contracts import RESUME_FILE, parse_step_dir
from trainsup.record import RUNTIME_FILE
from trainsup.durable import write_json_atomic
from trainsup.manifest import InvalidCheckpointError, verify
from trainsup.trainer import rng, statefile
from trainsup.trainer.errors import EpochOutOfRangeError, OptionError
from trainsup.textlog import get_logger
from trainsup.trainer.outcome import one_line
from trainsup.trainer.statefile import STATE_FILE, Components
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir, Retention, Skipped

log = get_logger()
Resume = Literal["latest", "best", "none"]
Select = Literal["latest", "best"]


@dataclass(frozen=True)
class Resumed:
    """A checkpoint whose state is loaded into the components, and where its loop stood."""

    checkpoint: Checkpoint
    select: Select
    step: int
    epoch: int
    position: int
    pending_rng: dict[str, Any]
    batch: Batch | None  # the batch the checkpoint was written with

    def started_from(self, attempt: int) -> dict[str, Any]:
        return {"select": self.select, "checkpoint": self.checkpoint.name, "step": self.checkpoint.step,
                "attempt": attempt}


def check_resume(resume: str, retention: Retention) -> None:
    if resume not in ("latest", "best", "none"):
        raise OptionError(f"resume must be 'latest', 'best' or 'none', not {resume!r}.")
    if resume == "best" and not retention.metric:
        raise OptionError("resume='best' needs Retention(metric=...) to say which checkpoint is best.")


def resume_from(checkpoints: CheckpointDir, resume: Resume, components: Components, device: torch.device, *,
                attempt: int, skipped: list[Skipped] | None = None) -> Resumed | None:
    """Load the checkpoint to start from into `components`; None means start fresh.

    "best" ranks by the metric and mode of `checkpoints.retention`. Every checkpoint
    tried and passed over (it does not verify or does not load) is appended to `skipped`.
    """
    skipped = [] if skipped is None else skipped
    existing = checkpoints.step_dirs()
    if resume == "none":
        for path in existing:
            checkpoints.set_aside(path, "the run was started with resume='none'")
        log.info("starting fresh in %s (resume='none')", checkpoints.root)
        return None
    select: Select = "best" if resume == "best" else "latest"
    if select == "best" and attempt > 1:
        log.info("attempt %d restarts the run: resuming from the latest checkpoint, not the best", attempt)
        select = "latest"
    resumed = load_first(checkpoints, select, components, device, skipped)
    if resumed is None and select == "best" and existing:
        log.warning("no valid checkpoint records %s; resuming from the latest instead", checkpoints.retention.metric)
        resumed = load_first(checkpoints, "latest", components, device, skipped,
                             already={s.checkpoint for s in skipped})
    if resumed is None:
        why = f"none of the {len(existing)} checkpoints is usable" if existing else "no checkpoint yet"
        log.warning("starting fresh from epoch 0, step 0: %s in %s", why, checkpoints.root)
    return resumed


def load_first(checkpoints: CheckpointDir, select: Select, components: Components, device: torch.device,
               skipped: list[Skipped], already: set[str] = frozenset()) -> Resumed | None:
    """Load the first checkpoint in `select` order that verifies and loads; the ones
    passed over are appended to `skipped` (except those named in `already`)."""
    retention = checkpoints.retention
    rejected: list[Skipped] = []
    try:
        for checkpoint in checkpoints.verified(select, retention.metric, retention.mode, rejected):
            if checkpoint.name in already:
                continue
            try:
                state = statefile.load(checkpoint.path / STATE_FILE, device)
            except Exception as exc:
                log.warning("checkpoint %s is not usable: %s cannot be loaded safely (%s); falling back to an older one",
                            checkpoint.name, STATE_FILE, one_line(exc)[:200])
                rejected.append(Skipped(checkpoint.name, f"{STATE_FILE} cannot be loaded ({_first_sentence(exc)})"))
                continue
            return apply(components, checkpoint, state, select)
        return None
    finally:
        skipped.extend(s for s in rejected if s.checkpoint not in already)


def apply(components: Components, checkpoint: Checkpoint, state: dict[str, Any], select: Select) -> Resumed:
    statefile.apply(components, state, checkpoint.name)
    progress = state["progress"]
    batch = Batch.from_dict(state["batch"]) if state.get("batch") else None
    resumed = Resumed(checkpoint, select, progress["step"], progress["epoch"], progress["position"],
                      {"states": state["rng"], "point": progress["rng_point"]}, batch)
    log.info("resuming from %s: epoch %d, step %d, sample %d of the epoch",
             checkpoint.path, resumed.epoch, resumed.step, resumed.position)
    return resumed


def set_aside_newer(checkpoints: CheckpointDir, chosen: Checkpoint | None) -> None:
    """Set aside the checkpoints newer than `chosen` (all of them when starting fresh)."""
    for path in checkpoints.step_dirs():
        if chosen is None:
            checkpoints.set_aside(path, "no checkpoint is usable and the run starts fresh")
        elif (parse_step_dir(path.name) or 0) > chosen.step:
            checkpoints.set_aside(path, f"the run resumes from the older {chosen.name}")


def record(run_dir: Path | None, started_from: dict[str, Any], skipped: list[Skipped]) -> None:
    """Write `resume.json` (see `trainsup.contracts.RESUME_FILE`)."""
    if run_dir is None:
        return
    payload = {"select": "fresh", "checkpoint": None, "step": 0, **started_from,
               "skipped": [s.to_json() for s in skipped]}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / RESUME_FILE, payload)
    except OSError as exc:
        log.warning("cannot write %s/%s: %s", run_dir, RESUME_FILE, exc.strerror)
    try:  # for the run record (trainsup.record): the versions torch itself reports
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        write_json_atomic(run_dir / RUNTIME_FILE, {"torch": torch.__version__, "cuda": torch.version.cuda,
                                                   "cudnn": cudnn})
    except OSError as exc:
        log.warning("cannot write %s/%s: %s", run_dir, RUNTIME_FILE, exc.strerror)


def restore_rng(pending: dict[str, Any] | None, point: str) -> dict[str, Any] | None:
    """Restore the checkpoint's RNG states; they stay pending until the loop reaches the point they were captured at."""
    if pending is None:
        return None
    rng.restore(pending["states"])
    return None if pending["point"] == point else pending


def check_epochs(epoch: int, num_epochs: int, resumed_from: Checkpoint | None) -> None:
    if epoch > num_epochs:
        source = resumed_from.name if resumed_from else "the checkpoint"
        raise EpochOutOfRangeError(
            f"The run asks for {num_epochs} epochs but {source} has already finished {epoch}; "
            "raise the number of epochs or start fresh."
        )
    if epoch == num_epochs:
        log.info("all %d epochs are already done; nothing to train", num_epochs)


def _first_sentence(exc: BaseException) -> str:
    """`UnpicklingError: Weights only load failed`: the type and the first sentence, short."""
    sentence = one_line(exc).split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 120 else sentence[:119] + "…"


def init_source(spec: str | Path, retention: Retention) -> tuple[Path, str]:
    """Parse `Session(init_from=...)`: `"best:<dir>"`, `"latest:<dir>"`, or a checkpoint
    directory `.../step-…`, into (where, "best" | "latest" | "path")."""
    text = str(spec)
    for select in ("best", "latest"):
        if text.startswith(select + ":"):
            if select == "best" and not retention.metric:
                raise OptionError("init_from='best:…' needs Retention(metric=...) to say which checkpoint is best.")
            return Path(text[len(select) + 1:]).absolute(), select
    return Path(text).absolute(), "path"


def init_weights(spec: str | Path, retention: Retention, components: Components,
                 device: torch.device) -> dict[str, Any]:
    """Load only the model weights of the checkpoint `spec` names (verified, `weights_only`);
    the optimizer and the rest stay fresh. Returns the origin to record in the manifests.

    Raises:
        OptionError: no usable checkpoint there, or no model to load into.
        ArchitectureMismatchError: the weights do not fit the model.
    """
    where, select = init_source(spec, retention)
    if components.model is None:
        raise OptionError("init_from needs a model to load the weights into.")
    if select == "path":
        try:
            CheckpointDir(where.parent, retention=retention, shared=True).check_entries(where)
            manifest = verify(where)
        except InvalidCheckpointError as exc:
            raise OptionError(f"init_from {where} is not a usable checkpoint: {exc}.") from None
        checkpoint = Checkpoint(where, manifest)
    else:
        source = CheckpointDir(where, retention=retention, shared=True)  # a run the user named: any owner
        found = source.verified(select, retention.metric, retention.mode) if where.is_dir() else iter(())
        checkpoint = next(found, None)
        if checkpoint is None:
            what = f"records {retention.metric}" if select == "best" else "verifies"
            raise OptionError(f"init_from {select}:{where}: no checkpoint there {what}.")
    try:
        state = statefile.load(checkpoint.path / STATE_FILE, device)
    except Exception as exc:
        raise OptionError(f"init_from {checkpoint.path}: {STATE_FILE} cannot be loaded ({_first_sentence(exc)}).") from None
    if "model" not in state:
        raise OptionError(f"init_from {checkpoint.path}: the checkpoint holds no model weights.")
    statefile.check_architecture(components.model, state["model"], checkpoint.name)
    components.model.load_state_dict(state["model"])
    log.info("starting a new run from the weights of %s (step %d); optimizer and progress are fresh",
             checkpoint.path, checkpoint.step)
    return {"path": str(checkpoint.path), "checkpoint": checkpoint.name, "step": checkpoint.step,
            "select": select, "metrics": dict(checkpoint.manifest.metrics)}
