"""Errors raised by the training library.

    TrainsupError                      (trainsup.errors) message is one sentence
    └── TrainerError                   raised inside a training process
        ├── CheckpointDirLockedError   another run holds <checkpoint_dir>/.lock
        ├── CheckpointSaveError        a save failed; the previous checkpoint is intact
        ├── ArchitectureMismatchError  the checkpoint's model does not fit the model
        ├── EpochOutOfRangeError       the checkpoint is already past the last epoch
        └── LoopUsageError             the session was used in an order it cannot track

Inside ``with session:`` a TrainerError, or a ``trainsup.batch.BatchError`` (a batch that
cannot be), becomes one line on stderr, ``exit.json`` with reason "error", and exit code 1.
"""

from __future__ import annotations

from trainsup.errors import TrainsupError


class TrainerError(TrainsupError):
    """Base of the errors a training script sees from trainsup.trainer."""


class CheckpointDirLockedError(TrainerError):
    pass


class CheckpointSaveError(TrainerError):
    pass


class ArchitectureMismatchError(TrainerError):
    pass


class EpochOutOfRangeError(TrainerError):
    pass


class LoopUsageError(TrainerError):
    pass
