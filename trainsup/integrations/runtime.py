"""What every framework adapter does the same way: its log, `exit.json`, `resume.json`,
setting an unusable checkpoint aside, and the trainer library's stop signals and heartbeats.

Importing this module needs neither torch nor a framework. `write_exit` and `heartbeats`,
called inside training only, import `trainsup.trainer` (and with it torch) when first
called: the framework has loaded torch by then.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainsup.contracts import ENV_ATTEMPT, ENV_HEARTBEAT, ENV_RUN_DIR, RESUME_FILE, ExitReason
from trainsup.durable import write_json_atomic
from trainsup.layouts import QUARANTINE_DIR, quarantine
from trainsup.textlog import get_logger

if TYPE_CHECKING:
    from trainsup.trainer.heartbeat import HeartbeatWriter

HEARTBEAT_INTERVAL = 0.25


log = get_logger("trainsup.integrations")  # the framework's own logging is left alone


def env_int(raw: str | None, default: int) -> int:
    """`raw` as a whole number; `default` when it is unset or not a number."""
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def rank(env: Mapping[str, str]) -> int:
    """This process's global rank under torchrun (`RANK`), 0 without it."""
    return env_int(env.get("RANK"), 0)


# --- the run files ------------------------------------------------------------------------------


def write_exit(reason: ExitReason, step: int | None, detail: str, environ: Mapping[str, str] | None = None) -> None:
    """`$TRAINSUP_RUN_DIR/exit.json` (nothing off trainsup), as the trainer library writes it."""
    from trainsup.trainer.outcome import write_exit_info

    run_dir = (os.environ if environ is None else environ).get(ENV_RUN_DIR)
    write_exit_info(Path(run_dir) if run_dir else None, reason, step, detail)


def write_resume_record(chosen: str | None, step: int | None, skipped: list[dict[str, str]],
                        environ: Mapping[str, str] | None = None) -> None:
    """`$TRAINSUP_RUN_DIR/resume.json`: the checkpoint chosen (None: a fresh start) and the ones passed over."""
    env = os.environ if environ is None else environ
    run_dir = env.get(ENV_RUN_DIR)
    if not run_dir:
        return
    record = {"select": "latest" if chosen else "fresh", "checkpoint": chosen, "step": step or 0,
              "attempt": env_int(env.get(ENV_ATTEMPT), 1), "skipped": skipped}
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(run_dir) / RESUME_FILE, record)
    except OSError as exc:
        log.warning("cannot write %s/%s: %s", run_dir, RESUME_FILE, exc.strerror)


def refuse_foreign_dir(root: Path, environ: Mapping[str, str] | None = None) -> None:
    """The trainer's rule for checkpoint dirs other users can write (`trainsup.trainer.ownership`),
    for the adapters' resume: a dir owned or writable by another user is refused in one
    sentence unless `TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR=1`.

    Raises:
        UnsafeCheckpointDirError: not restartable; the trainer's excepthook turns it into one
            sentence and `exit.json` "config_error".
    """
    from trainsup.trainer.environment import TrainerEnv
    from trainsup.trainer.ownership import check_checkpoint_dir

    if os.path.lexists(root):
        check_checkpoint_dir(root, TrainerEnv.from_environ(environ).allow_shared_dir)


def foreign_entry(path: Path, kind: Literal["dir", "file"], environ: Mapping[str, str] | None = None) -> str | None:
    """Why checkpoint `path` must not be loaded though it may verify (a symbolic link, another
    user's), in a few words; None when it may."""
    from trainsup.trainer.environment import TrainerEnv
    from trainsup.trainer.ownership import entry_problem

    return entry_problem(path, kind, TrainerEnv.from_environ(environ).allow_shared_dir)


def reject(root: Path, path: Path, why: BaseException, *, move: bool = True, also: tuple[Path, ...] = ()) -> dict[str, str]:
    """Log that checkpoint `path` is not usable and (with `move`) set it and the files in
    `also` aside into `<root>/quarantine/`; its entry for `resume.json`'s "skipped"."""
    where = ""
    if move:
        try:
            target = quarantine(root, path.name)
            for extra in also:
                if os.path.lexists(extra):
                    quarantine(root, extra.name)
            where = f"moved to {QUARANTINE_DIR}/{target.name if target else path.name}, "
        except OSError as exc:
            where = f"could not move it to {QUARANTINE_DIR}/ ({exc.strerror}), "
    log.warning("checkpoint %s is not usable: %s; %sfalling back to an older one", path.name, why, where)
    return {"checkpoint": path.name, "why": str(why)}


# --- inside training (torch is loaded) ------------------------------------------------------------


def heartbeats(environ: Mapping[str, str] | None = None, interval: float = HEARTBEAT_INTERVAL) -> "HeartbeatWriter":
    """The trainer library's rate-limited writer of `$TRAINSUP_HEARTBEAT/rank-<RANK>.json` (a no-op without it)."""
    from trainsup.trainer.heartbeat import HeartbeatWriter

    env = os.environ if environ is None else environ
    directory = Path(env[ENV_HEARTBEAT]) if env.get(ENV_HEARTBEAT) else None
    return HeartbeatWriter(directory, rank(env), interval)


_group_end_registered = False


def end_gloo_group_at_exit() -> None:
    """At interpreter exit, before finalization: destroy the default process group if it is
    still alive and gloo's. A gloo process that reaches finalization with its group alive
    aborts there now and then ("terminate called without an active exception", SIGABRT; 2 in
    6 plain exits of a 2-process torchrun script here), which turns a finished run or a
    stop's exit 75 into a crash. NCCL is left alone: its destroy can wait on a peer that
    is gone. Registered once; a script that ends the group itself makes it a no-op."""
    global _group_end_registered
    if not _group_end_registered:
        atexit.register(_end_gloo_group)
        _group_end_registered = True


def _end_gloo_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        dist.destroy_process_group()
