"""The micro-batch and gradient accumulation in force, from TRAINSUP_* or the script."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from trainsup.trainer.errors import TrainerError


@dataclass(frozen=True)
class BatchPlan:
    micro: int
    grad_accum: int = 1

    @property
    def global_batch(self) -> int:
        return self.micro * self.grad_accum

    def as_dict(self) -> dict[str, int]:
        return {"micro": self.micro, "grad_accum": self.grad_accum, "global": self.global_batch}


def batch_plan(micro: int, grad_accum: int = 1, environ: Mapping[str, str] | None = None) -> BatchPlan:
    """The script's defaults, overridden by the supervisor's TRAINSUP_BATCH_SIZE,
    TRAINSUP_GRAD_ACCUM and TRAINSUP_GLOBAL_BATCH_SIZE so that the global batch
    stays `micro * grad_accum` when the supervisor shrinks the micro-batch."""
    env = os.environ if environ is None else environ
    env_micro = _positive(env, "TRAINSUP_BATCH_SIZE")
    env_accum = _positive(env, "TRAINSUP_GRAD_ACCUM")
    env_global = _positive(env, "TRAINSUP_GLOBAL_BATCH_SIZE")
    target = env_global or micro * grad_accum
    new_micro = env_micro or micro
    if env_accum:
        accum = env_accum
    elif env_micro:
        if target % new_micro:
            raise TrainerError(f"The micro-batch {new_micro} does not divide the global batch {target}.")
        accum = target // new_micro
    else:
        accum = grad_accum
    if env_global and new_micro * accum != env_global:
        raise TrainerError(
            f"TRAINSUP_BATCH_SIZE {new_micro} x TRAINSUP_GRAD_ACCUM {accum} is not TRAINSUP_GLOBAL_BATCH_SIZE {env_global}."
        )
    return BatchPlan(new_micro, accum)


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise TrainerError(f"{name}={raw!r} is not a whole number.") from None
    if value < 1:
        raise TrainerError(f"{name}={raw!r} must be at least 1.")
    return value
