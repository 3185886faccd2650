"""What the CLI, the daemon, the attempt monitor and the training process agree on.

Stdlib only: the monitor and `trainsup status` import it, and so does the trainer.

- exit codes and the environment an attempt gets (`TRAINSUP_*`);
- the files of an attempt's run dir and what is in them;
- the heartbeat record (`<TRAINSUP_HEARTBEAT>/rank-<N>.json`), written and read here;
- the checkpoint dir: the trainer's `step-NNNNNNNNN` names and the `.lock` file;
- which variables of the daemon's own unit never reach a job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import signal
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

# The records are NamedTuples and names are parsed without `re`: the attempt monitor
# imports this module on every restart, and dataclasses + re cost it ~15 ms to start.

# --- exit codes ----------------------------------------------------------------

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the job checkpointed on request and wants to be resumed

# --- the environment of an attempt ---------------------------------------------

ENV_JOB_ID = "TRAINSUP_JOB_ID"
ENV_JOB_NAME = "TRAINSUP_JOB_NAME"
ENV_ATTEMPT = "TRAINSUP_ATTEMPT"
ENV_RUN_DIR = "TRAINSUP_RUN_DIR"
ENV_CHECKPOINT_DIR = "TRAINSUP_CHECKPOINT_DIR"
ENV_HEARTBEAT = "TRAINSUP_HEARTBEAT"
ENV_BATCH_SIZE = "TRAINSUP_BATCH_SIZE"
ENV_GRAD_ACCUM = "TRAINSUP_GRAD_ACCUM"
ENV_GLOBAL_BATCH_SIZE = "TRAINSUP_GLOBAL_BATCH_SIZE"

# Variables of the daemon's own unit that must not leak into a job: the notify socket
# and watchdog, and socket-activation fds a child would wrongly think are its own.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
UNIT_ONLY_ENV = (*NOTIFY_ENV, "LISTEN_FDS", "LISTEN_PIDS", "LISTEN_FDNAMES")


def clean_child_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the variables that belong to the daemon's own systemd unit."""
    return {key: value for key, value in env.items() if key not in UNIT_ONLY_ENV}


# --- the boot -----------------------------------------------------------------

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
ENV_BOOT_ID_FILE = "TRAINSUP_BOOT_ID_FILE"  # names another file (tests simulate reboots)


def boot_id_path() -> Path:
    """Where this boot's id is read: the daemon's records and the trainer's snapshots agree on it."""
    return Path(os.environ.get(ENV_BOOT_ID_FILE) or BOOT_ID_FILE)


# --- the run dir of an attempt: jobs/<id>/attempt-N.run/ ------------------------

LAUNCH_FILE = "launch.json"  # daemon → monitor: command, cwd, env, log, lock, grace, cgroup
STARTED_FILE = "started.json"  # monitor: the job's pid and start time
ENDED_FILE = "ended.json"  # monitor: how the job's main process ended
EXIT_FILE = "exit.json"  # trainer: why it is exiting (`ExitReason`), step, detail (one sentence) — `TrainerExit`
# resume.json, trainer: which checkpoint it really started from, and the newer ones it passed over:
#   {"select": "latest"|"best"|"fresh"|"snapshot", "checkpoint": "step-000001200"|null, "step": 1200|0, "attempt": 2,
#    (a snapshot: "snapshot": its path in /dev/shm, "disk": the newest disk checkpoint it was newer than),
#    "skipped": [{"checkpoint": "step-000001300", "why": "state.pt does not match its sha256 in the manifest"}]}
# written when it resumed from a checkpoint, or started fresh because every checkpoint was skipped.
RESUME_FILE = "resume.json"
SNAPSHOTS_FILE = "snapshots.json"  # trainer: in-memory snapshots {"on", "why_off", "root", "budget_bytes", "every_seconds"}
HANG_FILE = "hang.json"  # daemon: the hang verdict it killed the attempt for (a record for people)
HEARTBEAT_DIR = "heartbeat"  # every rank: rank-<N>.json
MONITOR_LOG = "monitor.log"  # the monitor's own stderr

# The warm standby of a job (docs/standby.md): jobs/<id>/standby-<next attempt>/
STANDBY_DIR_PREFIX = "standby-"
STANDBY_FILE = "standby.json"  # daemon → standby monitor: interpreter, cwd, env, preload, command
STANDBY_READY_FILE = "ready.json"  # standby monitor: {"pid", "attempt", "preloaded", "problems", "ready_at"}

# finished: the `with Session` block ended normally, the run is done (so exit 0 after a stop
#   we asked for is a success, not an interruption); preempted: checkpointed on a stop
#   request, exit 75; oom: out of memory; error: failed, a restart may help; config_error:
#   failed in a way no restart can fix (checkpoint/model mismatch, bad options or environment),
#   `detail` is the one sentence to show.
ExitReason = Literal["finished", "preempted", "oom", "error", "config_error"]


class LaunchRecord(NamedTuple):
    """`launch.json`: everything an attempt's monitor needs, decided by the daemon."""

    command: list[str]
    cwd: str | None
    env: dict[str, str]
    log_path: str
    lock_path: str  # held while the job runs: two attempts of one job never overlap
    grace_period: float  # from the stop signal to SIGKILL
    stop_signal: str | None = None  # a signal name; None: SIGTERM
    cgroup: str | None = None  # the attempt's memory cgroup, if trainsup could make one

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, payload: Any) -> "LaunchRecord | None":
        if not isinstance(payload, Mapping):
            return None
        try:
            return cls(
                command=[str(arg) for arg in payload["command"]],
                cwd=_str_or_none(payload.get("cwd")),
                env={str(k): str(v) for k, v in payload["env"].items()},
                log_path=str(payload["log_path"]),
                lock_path=str(payload["lock_path"]),
                grace_period=float(payload["grace_period"]),
                stop_signal=_str_or_none(payload.get("stop_signal")),
                cgroup=_str_or_none(payload.get("cgroup")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class EndedRecord(NamedTuple):
    """`ended.json`: what the monitor saw when the job's main process ended."""

    exit_code: int | None = None
    signal: int | None = None
    ended_at: float | None = None
    never_started: bool = False  # stopped before it started the job (e.g. waiting for the lock)
    spawn_error: str | None = None  # the command could not be started
    stop_requested: bool = False  # the monitor had been asked to stop the job
    killed_after_grace: bool = False

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, payload: Any) -> "EndedRecord | None":
        if not isinstance(payload, Mapping):
            return None
        return cls(
            exit_code=_int_or_none(payload.get("exit_code")),
            signal=_int_or_none(payload.get("signal")),
            ended_at=_float_or_none(payload.get("ended_at")),
            never_started=bool(payload.get("never_started")),
            spawn_error=_str_or_none(payload.get("spawn_error")),
            stop_requested=bool(payload.get("stop_requested")),
            killed_after_grace=bool(payload.get("killed_after_grace")),
        )


class TrainerExit(NamedTuple):
    """`exit.json`: the training process said why it is exiting."""

    reason: str  # one of ExitReason; other values are kept but mean nothing to the daemon
    step: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, payload: Any) -> "TrainerExit | None":
        if not isinstance(payload, Mapping) or not isinstance(payload.get("reason"), str):
            return None
        detail = payload.get("detail")
        return cls(reason=payload["reason"], step=_int_or_none(payload.get("step")),
                   detail=detail if isinstance(detail, str) else "")


def describe_exit(exit_code: int | None, signum: int | None) -> str:
    """`exit 3`, `killed by SIGKILL`, or `no exit status`."""
    if signum is not None:
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    if exit_code is None:
        return "no exit status"
    return f"exit {exit_code}"


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None if it does not exist or is not valid JSON (yet)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_launch(run_dir: Path) -> LaunchRecord | None:
    return LaunchRecord.from_json(read_json(run_dir / LAUNCH_FILE))


def read_ended(run_dir: Path) -> EndedRecord | None:
    return EndedRecord.from_json(read_json(run_dir / ENDED_FILE))


def read_trainer_exit(run_dir: Path) -> TrainerExit | None:
    return TrainerExit.from_json(read_json(run_dir / EXIT_FILE))


# --- heartbeats ----------------------------------------------------------------

Phase = Literal["start", "train", "eval", "checkpoint"]
PHASES: tuple[str, ...] = get_args(Phase)


class Heartbeat(NamedTuple):
    """One rank's latest sign of life. `time` is the wall clock: the reader is another process.

    On disk (`rank-<rank>.json`, replaced at most 4 times a second, never fsync'd)::

        {"time": 1718000000.5, "step": 1200, "epoch": 3, "phase": "train", "loss": 1.93,
         "samples_per_s": 812.4, "max_memory_bytes": 9663676416, "pid": 4242, "total_steps": 6000}
    """

    rank: int
    time: float
    step: int
    epoch: int
    phase: str
    pid: int
    loss: float | None = None
    samples_per_s: float | None = None
    max_memory_bytes: int | None = None
    total_steps: int | None = None  # the run's length, for the ETA in `trainsup status`

    def to_json(self) -> dict[str, Any]:
        payload = self._asdict()
        del payload["rank"]
        return payload


def heartbeat_path(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}.json"


def write_heartbeat(directory: Path, beat: Heartbeat) -> None:
    """Replace `<directory>/rank-<N>.json` with `beat` (temp file + rename, no fsync).

    Raises:
        OSError: the directory cannot be written.
    """
    path = heartbeat_path(directory, beat.rank)
    tmp = directory / f".rank-{beat.rank}.json.tmp-{os.getpid()}"
    data = json.dumps(beat.to_json()).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)


def read_heartbeats(directory: Path) -> list[Heartbeat]:
    """Every readable heartbeat in `directory`, by rank; missing or garbled files are skipped."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    beats = []
    for name in names:
        rank = name[len("rank-"):-len(".json")]
        if not (name.startswith("rank-") and name.endswith(".json") and rank.isdigit() and rank.isascii()):
            continue
        beat = _parse_heartbeat(int(rank), read_json(directory / name))
        if beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda b: b.rank)


def latest_heartbeat(beats: Iterable[Heartbeat]) -> Heartbeat | None:
    return max(beats, key=lambda b: b.time, default=None)


def _parse_heartbeat(rank: int, payload: Any) -> Heartbeat | None:
    if not isinstance(payload, Mapping):
        return None
    time, step, epoch, pid = (payload.get(k) for k in ("time", "step", "epoch", "pid"))
    phase = payload.get("phase")
    if not _is_number(time) or not math.isfinite(time) or phase not in PHASES:
        return None
    if not (_is_int(step) and _is_int(pid) and (epoch is None or _is_int(epoch))):
        return None
    return Heartbeat(
        rank=rank, time=float(time), step=step, epoch=epoch or 0, phase=phase, pid=pid,
        loss=_float_or_none(payload.get("loss")),
        samples_per_s=_float_or_none(payload.get("samples_per_s")),
        max_memory_bytes=_int_or_none(payload.get("max_memory_bytes")),
        total_steps=_int_or_none(payload.get("total_steps")),
    )


# --- the checkpoint dir ----------------------------------------------------------

LOCK_FILE = ".lock"  # held by the attempt (monitor and job) or a standalone trainer run
STEP_DIR_PREFIX = "step-"


def step_dir_name(step: int) -> str:
    """The trainer's name for the checkpoint of `step`: `step-000001200`."""
    return f"{STEP_DIR_PREFIX}{step:09d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a trainer checkpoint dir name, None for any other name."""
    digits = name[len(STEP_DIR_PREFIX):]
    if not (name.startswith(STEP_DIR_PREFIX) and len(digits) >= 9 and digits.isdigit() and digits.isascii()):
        return None
    return int(digits)


# The Hugging Face Trainer's (and accelerate's, as trainsup saves it) `checkpoint-N/`.
HF_CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def parse_hf_checkpoint_dir(name: str) -> int | None:
    """N of a `checkpoint-N` name, None for any other name."""
    digits = name[len(HF_CHECKPOINT_PREFIX):]
    if not (name.startswith(HF_CHECKPOINT_PREFIX) and digits.isdigit() and digits.isascii()):
        return None
    return int(digits)


# --- exclusive locks (flock) -------------------------------------------------------


class UnsafeLockFileError(OSError):
    """The lock file is a symbolic link, not a regular file, or has other hard links:
    something another user could have planted to make us write through it. `str()` is
    one sentence."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_lock_file(path: Path) -> int:
    """An fd on the lock file `path` (created 0600), for `try_lock`.

    Never follows a symbolic link at `path` and never opens anything but a regular file
    with one link, so a `.lock` planted in a directory others can write cannot make the
    holder truncate (`write_owner`) or create a file elsewhere.

    Raises:
        UnsafeLockFileError: `path` is a symlink, not a regular file, or a hard link.
        OSError: it cannot be opened or created.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        try:
            why = _unsafe_lock(os.lstat(path))  # ELOOP: a symlink; EISDIR, ENXIO: a directory, a socket
        except OSError:
            why = None
        if why:
            raise UnsafeLockFileError(exc.errno, f"the lock file {path} {why}", str(path)) from None
        raise
    why = _unsafe_lock(os.fstat(fd))
    if why:
        os.close(fd)
        raise UnsafeLockFileError(errno.EPERM, f"the lock file {path} {why}", str(path))
    return fd


def _unsafe_lock(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink > 1:
        return f"has {st.st_nlink} hard links"
    return None


def try_lock(fd: int) -> bool:
    """Take the exclusive flock on `fd` without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def write_owner(fd: int) -> None:
    """Write this process's pid into a lock file it holds, for `lock_owner` to read."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def lock_owner(path: Path) -> int | None:
    """The pid written in a held lock file (0 if it holds no pid), None if nobody holds it
    (nor can: a symlink or a non-regular file is never used as a lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        if _unsafe_lock(os.fstat(fd)):
            return None
        if try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        content = os.read(fd, 64).decode(errors="replace").strip()
        return int(content) if content.isdigit() else 0
    finally:
        os.close(fd)


# --- small parsers -------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return value if _is_int(value) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
