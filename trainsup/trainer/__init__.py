"""Power-safe checkpoints and bit-exact resume for a training script.

Imported inside the training process; the only part of trainsup that needs torch.
See docs/trainer.md.
"""

from trainsup.trainer.batching import BatchPlan, batch_plan
from trainsup.trainer.environment import TrainerEnv
from trainsup.trainer.errors import (
    ArchitectureMismatchError,
    CheckpointDirLockedError,
    CheckpointSaveError,
    EpochOutOfRangeError,
    LoopUsageError,
    TrainerError,
)
from trainsup.trainer.fsops import FileOps
from trainsup.trainer.outcome import EXIT_TEMPFAIL
from trainsup.trainer.sampler import ResumableSampler
from trainsup.trainer.session import Session
from trainsup.trainer.step import Step
from trainsup.trainer.store import Checkpoint, CheckpointStore, Retention

__all__ = [
    "ArchitectureMismatchError",
    "BatchPlan",
    "Checkpoint",
    "CheckpointDirLockedError",
    "CheckpointSaveError",
    "CheckpointStore",
    "EXIT_TEMPFAIL",
    "EpochOutOfRangeError",
    "FileOps",
    "LoopUsageError",
    "ResumableSampler",
    "Retention",
    "Session",
    "Step",
    "TrainerEnv",
    "TrainerError",
    "batch_plan",
]
