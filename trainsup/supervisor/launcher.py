"""Starting one attempt: its environment, its run dir, its monitor process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainsup.durable import write_json_atomic
from trainsup.jobs.store import Job
from trainsup.contracts import clean_child_env

LOCK_NAME = ".lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything an attempt needs, decided by the daemon before it starts."""

    job: Job
    number: int
    run_dir: Path
    log_path: Path
    batch_env: dict[str, str]
    gpu_env: dict[str, str]
    cgroup: str | None = None

    @property
    def heartbeat_dir(self) -> Path:
        return self.run_dir / "heartbeat"


def attempt_environment(plan: LaunchPlan) -> dict[str, str]:
    """The submitting shell's environment, the spec's env on top, then ours."""
    env = dict(plan.job.environment)
    env.update(plan.job.spec.get("env") or {})
    env = clean_child_env(env)
    env.update(
        TRAINSUP_JOB_ID=plan.job.id,
        TRAINSUP_JOB_NAME=plan.job.name,
        TRAINSUP_ATTEMPT=str(plan.number),
        TRAINSUP_RUN_DIR=str(plan.run_dir),
        TRAINSUP_CHECKPOINT_DIR=plan.job.checkpoint_dir,
        TRAINSUP_HEARTBEAT=str(plan.heartbeat_dir),
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
    )
    env.update(plan.batch_env)
    env.update(plan.gpu_env)
    return env


def start_monitor(plan: LaunchPlan) -> subprocess.Popen:
    """Write the launch file and start the attempt's monitor in a new session."""
    plan.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    plan.heartbeat_dir.mkdir(mode=0o700, exist_ok=True)
    Path(plan.job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    spec = plan.job.spec
    write_json_atomic(
        plan.run_dir / "launch.json",
        {
            "command": spec["command"],
            "cwd": spec["workdir"],
            "env": attempt_environment(plan),
            "log_path": str(plan.log_path),
            "lock_path": str(Path(plan.job.checkpoint_dir) / LOCK_NAME),
            "grace_period": spec["grace_period"],
            "cgroup": plan.cgroup,
        },
    )
    monitor_log = open(plan.run_dir / "monitor.log", "ab")
    # Blocked here, inherited blocked: a stop request that arrives before the monitor
    # has its handlers waits for them instead of killing it mid-start.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "trainsup.supervisor.monitor", str(plan.run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=monitor_log,
            stderr=monitor_log,
            start_new_session=True,
            env=_monitor_environment(),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        monitor_log.close()


def _monitor_environment() -> dict[str, str]:
    return clean_child_env(os.environ)
