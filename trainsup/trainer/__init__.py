"""Power-safe checkpoints and bit-exact resume for a training script.

Imported inside the training process; the only part of trainsup that needs torch.
See docs/trainer.md.
"""

from trainsup.batch import Batch, BatchError
from trainsup.contracts import EXIT_PREEMPTED
from trainsup.trainer.atomic import save_file
from trainsup.trainer.checkpoints import Checkpoint, CheckpointDir, Retention
from trainsup.trainer.environment import TrainerEnv
from trainsup.trainer.errors import (
    ArchitectureMismatchError,
    CheckpointDirLockedError,
    CheckpointSaveError,
    EpochOutOfRangeError,
    LoopUsageError,
    OptionError,
    TrainerError,
    UnsafeCheckpointDirError,
)
from trainsup.trainer.fsops import FileOps
from trainsup.trainer.outcome import install_excepthook
from trainsup.trainer.sampler import ResumableSampler
from trainsup.trainer.saving import Saving
from trainsup.trainer.session import Session
from trainsup.trainer.snapshot import Snapshots
from trainsup.trainer.step import Step

__all__ = [
    "ArchitectureMismatchError",
    "Batch",
    "BatchError",
    "Checkpoint",
    "CheckpointDir",
    "CheckpointDirLockedError",
    "CheckpointSaveError",
    "EXIT_PREEMPTED",
    "EpochOutOfRangeError",
    "FileOps",
    "LoopUsageError",
    "OptionError",
    "ResumableSampler",
    "Retention",
    "Saving",
    "Session",
    "Snapshots",
    "Step",
    "TrainerEnv",
    "TrainerError",
    "UnsafeCheckpointDirError",
    "save_file",
]

install_excepthook()  # a trainsup error outside a session also ends in one sentence and exit.json
