"""The sbatch script of a job file: Slurm's options, then `exec trainsup run` on the job file.

`--signal=B:USR1@S` sends USR1 to the batch shell only, S seconds before the time limit;
the script `exec`s trainsup so that trainsup is that shell. S is the job's grace_period
plus a margin for the requeue itself; Slurm checks time limits about every 30 seconds,
so the signal comes up to that much later than asked.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from trainsup.errors import SpecError
from trainsup.jobs.spec import JobSpec

REQUEUE_MARGIN_S = 10  # after the job stopped: record its end, `scontrol requeue`, exit
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@,:%-]+")


def signal_seconds(spec: JobSpec) -> int:
    return math.ceil(spec.grace_period) + REQUEUE_MARGIN_S


def time_limit(seconds: float) -> str:
    """Slurm's D-HH:MM:SS, rounded up to whole minutes (Slurm's resolution)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00"


def render(spec: JobSpec, spec_path: Path, workdir: Path, slurm_dir: Path, python: str,
           name: str | None = None) -> str:
    """The script for the job in `spec_path` (absolute); its output goes to `slurm_dir/<Slurm id>.log`.

    Raises:
        SpecError: a path sbatch cannot take in an #SBATCH line, or a time limit shorter than the signal.
    """
    for what, path in (("the job's folder", workdir), ("the state folder", slurm_dir)):
        if not _SAFE_PATH.fullmatch(str(path)):
            raise SpecError(f"{what} {path} has characters an #SBATCH line cannot hold; use a plainer path.")
    slurm = spec.slurm
    signal_at = signal_seconds(spec)
    options = [
        f"--job-name={spec.name}",
        "--requeue",
        f"--signal=B:USR1@{signal_at}",
        "--open-mode=append",
        f"--output={slurm_dir / '%j.log'}",
        f"--chdir={workdir}",
    ]
    if spec.gpus:
        options.append(f"--gres=gpu:{spec.gpus}")
    if slurm is not None:
        if slurm.time is not None:
            if slurm.time <= signal_at:
                raise SpecError(f"{spec_path}: field 'slurm.time': {time_limit(slurm.time)} leaves no time to run "
                                f"before the stop signal, {signal_at}s before the limit (grace_period + "
                                f"{REQUEUE_MARGIN_S}s).")
            options.append(f"--time={time_limit(slurm.time)}")
        options += [f"--{flag}={value}" for flag, value in (
            ("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos),
            ("cpus-per-task", slurm.cpus_per_task), ("mem", slurm.mem)) if value is not None]
        options += slurm.sbatch
    run = [python, "-m", "trainsup", "run", str(spec_path)] + (["--name", name] if name else [])
    report = shlex.quote(str(slurm_dir)) + '/"$SLURM_JOB_ID".report.json'
    return "\n".join([
        "#!/bin/bash",
        f"# trainsup: {spec.name} from {spec_path} (docs/slurm.md)",
        *(f"#SBATCH {option}" for option in options),
        "",
        "# trainsup run supervises the job in this allocation: restarts in place, and on USR1",
        "# (the time limit) or a preemption it checkpoints the job and requeues this Slurm job.",
        f"exec {shlex.join(run)} --report {report}",
        "",
    ])
