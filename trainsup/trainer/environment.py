"""What the supervisor tells a training process through TRAINSUP_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from trainsup.contracts import (
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_HEARTBEAT,
    ENV_JOB_ID,
    ENV_JOB_NAME,
    ENV_RUN_DIR,
)

# Accept a checkpoint dir other users could have written (see trainsup.trainer.ownership).
ENV_ALLOW_SHARED_CHECKPOINT_DIR = "TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR"
# Off (0/false/no/off): a background save never lets OpenMP's idle workers go (trainsup.trainer.openmp).
ENV_OPENMP_RELEASE = "TRAINSUP_OPENMP_RELEASE"


@dataclass(frozen=True)
class TrainerEnv:
    job_id: str | None = None
    job_name: str | None = None
    attempt: int = 1
    run_dir: Path | None = None
    checkpoint_dir: Path | None = None
    heartbeat_dir: Path | None = None
    rank: int = 0
    allow_shared_dir: bool = False
    release_openmp_workers: bool = True

    @property
    def supervised(self) -> bool:
        """True under the daemon, which then holds the checkpoint dir's lock itself."""
        return self.job_id is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "TrainerEnv":
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        def switch(name: str, default: bool) -> bool:
            value = env.get(name, "").strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            return default

        def number(name: str, default: int) -> int:
            try:
                return int(env.get(name, default))
            except ValueError:
                return default

        return cls(
            job_id=env.get(ENV_JOB_ID) or None,
            job_name=env.get(ENV_JOB_NAME) or None,
            attempt=number(ENV_ATTEMPT, 1),
            run_dir=path(ENV_RUN_DIR),
            checkpoint_dir=path(ENV_CHECKPOINT_DIR),
            heartbeat_dir=path(ENV_HEARTBEAT),
            rank=number("RANK", 0),  # torchrun's
            allow_shared_dir=switch(ENV_ALLOW_SHARED_CHECKPOINT_DIR, False),
            release_openmp_workers=switch(ENV_OPENMP_RELEASE, True),
        )
