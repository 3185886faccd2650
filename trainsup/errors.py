"""Errors a user can see.

    TrainsupError                 base: message is one sentence for the user
    ├── SpecError                 a job file is malformed or invalid
    ├── JobNotFoundError          no job matches an id or name
    ├── AmbiguousJobError         a name prefix matches several jobs
    ├── DaemonAlreadyRunningError another daemon holds the state dir
    ├── IllegalTransitionError    a job state change the state machine forbids
    ├── ServiceError              the systemd service cannot be installed
    ├── DatabaseVersionError      the database was written by another version of trainsup
    └── SlurmError                a Slurm command is missing or refused a request
"""


class TrainsupError(Exception):
    """Base of every error whose message is shown to the user as is."""

    exit_code = 1


class SpecError(TrainsupError):
    exit_code = 2


class JobNotFoundError(TrainsupError):
    exit_code = 3


class AmbiguousJobError(TrainsupError):
    exit_code = 3


class DaemonAlreadyRunningError(TrainsupError):
    exit_code = 4


class IllegalTransitionError(TrainsupError):
    pass


class ServiceError(TrainsupError):
    pass


class DatabaseVersionError(TrainsupError):
    """The database's schema is newer than this trainsup reads, or older and not upgraded yet."""

    exit_code = 5


class SlurmError(TrainsupError):
    """sbatch, squeue, scontrol or scancel is not installed, or answered with an error."""
