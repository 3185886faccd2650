"""Errors raised by the training library.

    TrainsupError                      (trainsup.errors) message is one sentence
    └── TrainerError                   raised inside a training process
        ├── CheckpointDirLockedError   another run holds <checkpoint_dir>/.lock          (restartable)
        ├── CheckpointSaveError        a save failed; the previous checkpoint is intact   (restartable)
        ├── UnsafeCheckpointDirError   the dir (or its .lock) is one another user could have written or planted
        ├── ArchitectureMismatchError  the checkpoint's model (or optimizer, …) does not fit
        ├── EpochOutOfRangeError       the checkpoint is already past the last epoch
        ├── LoopUsageError             the session was used in an order it cannot track
        └── OptionError                an option (Saving, Retention, resume=…) that cannot be; also a ValueError

Inside ``with session:`` any of these, or a ``trainsup.batch.BatchError`` (a batch that
cannot be), becomes one line on stderr (``error: <sentence>``) and exit code 1, with
``exit.json`` reason "error" when a restart may help (``restartable = True``) and
"config_error" when it cannot: the same code, arguments and checkpoint would fail the
same way again. A trainsup error without the attribute (``BatchError``) is a
configuration error.
"""

from __future__ import annotations

from trainsup.errors import TrainsupError


class TrainerError(TrainsupError):
    """Base of the errors a training script sees from trainsup.trainer."""

    restartable = False  # a restart with the same code, arguments and checkpoints would fail the same way


class CheckpointDirLockedError(TrainerError):
    restartable = True  # the other run may be gone by the next attempt


class CheckpointSaveError(TrainerError):
    restartable = True  # disk full, an I/O error: the next attempt may save


class UnsafeCheckpointDirError(TrainerError):
    """A checkpoint dir owned by or writable by another user, or a `.lock` that is a symlink
    or not a regular file: refused until someone looks (a restart would find the same)."""


class ArchitectureMismatchError(TrainerError):
    pass


class EpochOutOfRangeError(TrainerError):
    pass


class LoopUsageError(TrainerError):
    pass


class OptionError(TrainerError, ValueError):
    """An option object or argument that cannot be (`Saving(every_steps=0)`, `resume="newest"`)."""


def is_restartable(exc: BaseException) -> bool:
    """False for the errors no restart can fix (`restartable = False`, the default of trainsup errors)."""
    return bool(getattr(exc, "restartable", not isinstance(exc, TrainsupError)))
