"""What trainsup keeps of a Slurm job, under `<state dir>/slurm/`.

    <id>.json         SlurmJob: written by `trainsup submit --slurm` once sbatch answered
    <id>.sbatch       the script that was submitted
    <id>.log          Slurm's output file: `trainsup run`'s stdout, every attempt and requeue appended
    <id>.report.json  RunReport: written by `trainsup run` inside the allocation at each change

The state dir is usually in the home folder, which a cluster shares with its nodes, so
the login node reads what the node writes. Only whole files are written (rename), so a
reader never sees half a record.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from trainsup.durable import make_dirs, write_atomic
from trainsup.paths import StateDir

SLURM_ID = re.compile(r"[0-9]{1,12}")


class SlurmJob(BaseModel):
    """A job file submitted to Slurm."""

    model_config = ConfigDict(frozen=True)

    slurm_id: str
    name: str
    spec_path: str
    partition: str | None
    submitted_at: float
    script: str  # path of the submitted script
    log: str  # Slurm's output file
    report: str  # where `trainsup run` reports


class RunReport(BaseModel):
    """Where `trainsup run` stands: the job's state, its attempt, and the allocation it runs in."""

    model_config = ConfigDict(frozen=True)

    job_id: str  # the job's id in the run's own state dir
    name: str
    state: str  # trainsup's JobState, or "stopping" while it checkpoints for a requeue
    attempt: int  # counted across every allocation of the Slurm job
    last_reason: str | None
    result: str | None
    node: str
    slurm_id: str | None
    allocation: int  # 1 for the first, 2 after the first requeue, ...
    attempts_before: int  # attempts made in earlier allocations whose state dir this run does not have
    stop: str | None  # requeue, stop or cancel: why trainsup run stopped the job, if it did
    state_dir: str
    updated_at: float


class SlurmDir:
    """The folder of Slurm records inside a state dir."""

    def __init__(self, state: StateDir):
        self.root = state.root / "slurm"

    def ensure(self) -> None:
        make_dirs(self.root, 0o700)

    def record_path(self, slurm_id: str) -> Path:
        return self.root / f"{slurm_id}.json"

    def script_path(self, slurm_id: str) -> Path:
        return self.root / f"{slurm_id}.sbatch"

    def log_pattern(self) -> Path:
        return self.root / "%j.log"

    def log_path(self, slurm_id: str) -> Path:
        return self.root / f"{slurm_id}.log"

    def report_path(self, slurm_id: str) -> Path:
        return self.root / f"{slurm_id}.report.json"

    def save(self, job: SlurmJob) -> None:
        self.ensure()
        write_atomic(self.record_path(job.slurm_id), job.model_dump_json(indent=2).encode())

    def jobs(self) -> list[SlurmJob]:
        """Every recorded Slurm job, oldest first; unreadable records are skipped."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem, _, ext = name.partition(".")
            if ext == "json" and SLURM_ID.fullmatch(stem):
                job = _read(self.root / name, SlurmJob)
                if job is not None:
                    found.append(job)
        return sorted(found, key=lambda j: (j.submitted_at, int(j.slurm_id)))

    def find(self, key: str) -> SlurmJob | None:
        """The Slurm job `key` names: `slurm:ID`, `slurm:NAME`, its Slurm id, or (the newest of) its name."""
        key = key.removeprefix("slurm:")
        jobs = self.jobs()
        for match in ([j for j in jobs if j.slurm_id == key], [j for j in jobs if j.name == key]):
            if match:
                return match[-1]
        return None


def read_report(path: Path) -> RunReport | None:
    return _read(path, RunReport)


def write_report(path: Path, report: RunReport) -> None:
    write_atomic(path, report.model_dump_json(indent=2).encode())


def _read(path: Path, model: type[BaseModel]) -> BaseModel | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
