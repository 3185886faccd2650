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
from trainsup.durable import write_json_atomic
from trainsup.trainer import rng, statefile
from trainsup.trainer.errors import EpochOutOfRangeError
from trainsup.trainer.log import get_logger
from trainsup.trainer.outcome import one_line
from trainsup.trainer.statefile import STATE_FILE, Components
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir, Retention

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
        raise ValueError(f"resume must be 'latest', 'best' or 'none', not {resume!r}.")
    if resume == "best" and not retention.metric:
        raise ValueError("resume='best' needs Retention(metric=...) to say which checkpoint is best.")


def resume_from(checkpoints: CheckpointDir, resume: Resume, components: Components, device: torch.device, *,
                attempt: int) -> Resumed | None:
    """Load the checkpoint to start from into `components`; None means start fresh.

    "best" ranks by the metric and mode of `checkpoints.retention`.
    """
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
    resumed = load_first(checkpoints, select, components, device)
    if resumed is None and select == "best" and existing:
        log.warning("no valid checkpoint records %s; resuming from the latest instead", checkpoints.retention.metric)
        resumed = load_first(checkpoints, "latest", components, device)
    if resumed is None:
        why = f"none of the {len(existing)} checkpoints is usable" if existing else "no checkpoint yet"
        log.warning("starting fresh from epoch 0, step 0: %s in %s", why, checkpoints.root)
    return resumed


def load_first(checkpoints: CheckpointDir, select: Select, components: Components,
               device: torch.device) -> Resumed | None:
    retention = checkpoints.retention
    for checkpoint in checkpoints.verified(select, retention.metric, retention.mode):
        try:
            state = statefile.load(checkpoint.path / STATE_FILE, device)
        except Exception as exc:
            log.warning("checkpoint %s is not usable: %s cannot be loaded safely (%s); falling back to an older one",
                        checkpoint.name, STATE_FILE, one_line(exc)[:200])
            continue
        return apply(components, checkpoint, state, select)
    return None


def apply(components: Components, checkpoint: Checkpoint, state: dict[str, Any], select: Select) -> Resumed:
    statefile.apply(components, state, checkpoint.name)
    progress = state["progress"]
    batch = Batch.from_dict(state["batch"]) if state.get("batch") else None
    resumed = Resumed(checkpoint, select, progress["step"], progress["epoch"], progress["position"],
                      {"states": state["rng"], "point": progress["rng_point"]}, batch)
    log.info("resuming from %s: epoch %d, step %d, sample %d of the epoch",
             checkpoint.path, resumed.epoch, resumed.step, resumed.position)
    return resumed


def set_aside_newer(checkpoints: CheckpointDir, chosen: Checkpoint) -> None:
    for path in checkpoints.step_dirs():
        if (parse_step_dir(path.name) or 0) > chosen.step:
            checkpoints.set_aside(path, f"the run resumes from the older {chosen.name}")


def record(run_dir: Path | None, started_from: dict[str, Any]) -> None:
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / RESUME_FILE, started_from)


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
