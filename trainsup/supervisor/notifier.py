"""Telling the user: a command and/or a desktop notification when a job ends or restarts.

What to do comes from the job's `notify:`, else the user's default: the `notify:` of
`$TRAINSUP_CONFIG`, else `$XDG_CONFIG_HOME/trainsup/config.yaml` (`~/.config/...`),
read at each notification so that an edit applies without restarting the daemon.

Each notification runs in a thread of its own, in a new session, with a timeout after
which its process group is killed: a slow or broken notifier never blocks the daemon's
loop, and its failures are logged, never raised.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping

import structlog

from trainsup.contracts import clean_child_env
from trainsup.jobs.spec import NotifySpec
from trainsup.jobs.store import Attempt, Job
from trainsup.userconfig import read_section

log = structlog.get_logger("trainsup.notifier")

ENV_PREFIX = "TRAINSUP_NOTIFY_"
EVENT_OF_ACTION = {"succeed": "succeeded", "fail": "failed", "restart": "restart", "cancel": "cancelled"}


def user_default() -> NotifySpec | None:
    """The `notify:` of the user's config file; None when there is none or it is broken (logged)."""
    return read_section("notify", NotifySpec, log.warning)


def notify_env(job: Job, attempt: Attempt | None, event: str, state: str, reason: str, message: str) -> dict[str, str]:
    """The job's own environment (as its attempts get it, secrets already excluded) plus ours."""
    env = clean_child_env({**job.environment, **job.spec.env})
    env.update({
        f"{ENV_PREFIX}EVENT": event,
        f"{ENV_PREFIX}JOB_ID": job.id,
        f"{ENV_PREFIX}JOB_NAME": job.name,
        f"{ENV_PREFIX}STATE": state,
        f"{ENV_PREFIX}REASON": reason,
        f"{ENV_PREFIX}MESSAGE": message,
        f"{ENV_PREFIX}ATTEMPT": str(attempt.number) if attempt else "",
        f"{ENV_PREFIX}LOG": attempt.log_path if attempt else "",
    })
    return env


class Notifier:
    """Starts notifications; `threads` lets tests wait for them."""

    def __init__(self, default: NotifySpec | None = None, use_config: bool = True):
        self.default = default
        self.use_config = use_config
        self.threads: list[threading.Thread] = []

    def decided(self, job: Job, attempt: Attempt | None, action: str, state: str, reason: str, message: str) -> None:
        """Called once a decision is committed. Never raises."""
        try:
            event = EVENT_OF_ACTION.get(action)
            if event is None:
                return
            spec = job.spec.notify or self.default or (user_default() if self.use_config else None)
            if spec is None or event not in spec.on:
                return
            env = notify_env(job, attempt, event, state, reason, message)
            cwd = str(job.spec.workdir) if job.spec.workdir else None
            if spec.command:
                self._start(job.id, "command", list(spec.command), env, cwd, spec.timeout)
            if spec.desktop:
                if (program := shutil.which("notify-send", path=env.get("PATH"))) is None:
                    log.info("no notify-send on PATH: no desktop notification", job=job.id)
                else:
                    title = f"trainsup: {job.name} {event}"
                    body = f"{job.id} {state} ({reason}): {message}"
                    self._start(job.id, "desktop", [program, "--app-name=trainsup", title, body], env, cwd,
                                spec.timeout)
        except Exception as exc:  # noqa: BLE001 - telling the user must never stop supervision
            log.warning("notification failed", job=job.id, error=f"{exc.__class__.__name__}: {exc}")

    def _start(self, job_id: str, kind: str, argv: list[str], env: Mapping[str, str], cwd: str | None,
               timeout: float) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        thread = threading.Thread(target=run_one, args=(job_id, kind, argv, dict(env), cwd, timeout),
                                  name=f"notify-{job_id}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        for thread in list(self.threads):
            thread.join(timeout)


def run_one(job_id: str, kind: str, argv: list[str], env: dict[str, str], cwd: str | None, timeout: float) -> None:
    """Run one notifier to its end or its timeout; log what went wrong. Never raises."""
    try:
        process = subprocess.Popen(argv, env=env, cwd=cwd if cwd and os.path.isdir(cwd) else None,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    except OSError as exc:
        log.warning("cannot start the notifier", job=job_id, kind=kind, command=argv[0], error=str(exc))
        return
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        log.warning("the notifier timed out and was killed", job=job_id, kind=kind, command=argv[0],
                    timeout_s=timeout)
        return
    if process.returncode != 0:
        tail = output.decode("utf-8", "replace").strip()[-500:]
        log.warning("the notifier failed", job=job_id, kind=kind, command=argv[0], exit_code=process.returncode,
                    output=tail)
    else:
        log.info("notified", job=job_id, kind=kind)
