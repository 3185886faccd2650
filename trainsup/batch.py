"""The batch in force: micro-batch × gradient accumulation = a global batch that never changes.

One type for the daemon (which shrinks the micro-batch after a CUDA OOM and passes it
in `TRAINSUP_BATCH_SIZE` / `TRAINSUP_GRAD_ACCUM` / `TRAINSUP_GLOBAL_BATCH_SIZE`) and the
trainer (which reads those variables over the script's defaults). Stdlib only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainsup.contracts import ENV_BATCH_SIZE, ENV_GLOBAL_BATCH_SIZE, ENV_GRAD_ACCUM
from trainsup.errors import TrainsupError


class BatchError(TrainsupError):
    """A batch that cannot be: sizes below 1, or a micro-batch that does not divide the global batch."""

    restartable = False  # the same arguments fail the same way on every attempt


@dataclass(frozen=True)
class Batch:
    micro: int
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if min(self.micro, self.grad_accum) < 1:
            raise BatchError("the micro-batch and the accumulation steps must be at least 1")

    @property
    def global_batch(self) -> int:
        return self.micro * self.grad_accum

    @classmethod
    def of_global(cls, global_batch: int, micro: int) -> "Batch":
        """The batch with this global size and micro-batch; `micro` must divide it."""
        if micro < 1 or global_batch < 1 or global_batch % micro:
            raise BatchError(f"micro-batch {micro} does not divide the global batch {global_batch}")
        return cls(micro, global_batch // micro)

    def after_oom(self, factor: float = 0.5, *, min_micro: int = 1) -> "Batch | None":
        """The batch for the attempt after a CUDA OOM, or None below `min_micro`.

        The new micro-batch is the largest divisor of the global batch that is at most
        `factor` × the current one, so the product stays exact (96/48 → 24 → 12 → 6 → 3 → 1).
        """
        if not 0 < factor < 1:
            raise BatchError(f"the backoff factor must be between 0 and 1, not {factor}")
        # The epsilon keeps 0.29 × 100 = 28.999999999999996 at 29.
        limit = math.floor(factor * self.micro + 1e-9)
        micro = next((m for m in range(limit, 0, -1) if self.global_batch % m == 0), None)
        if micro is None or micro < min_micro:
            return None
        return Batch.of_global(self.global_batch, micro)

    def describe(self) -> str:
        return f"micro-batch {self.micro} × accumulation {self.grad_accum} = {self.global_batch}"

    # --- as data ---------------------------------------------------------------

    def as_dict(self) -> dict[str, int]:
        return {"micro": self.micro, "grad_accum": self.grad_accum, "global": self.global_batch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Batch":
        """Read `as_dict()`; also the `accum` key that databases before schema 2 hold."""
        accum = data.get("grad_accum", data.get("accum"))
        return cls(int(data["micro"]), int(accum))

    def to_env(self) -> dict[str, str]:
        return {
            ENV_BATCH_SIZE: str(self.micro),
            ENV_GRAD_ACCUM: str(self.grad_accum),
            ENV_GLOBAL_BATCH_SIZE: str(self.global_batch),
        }

    @classmethod
    def from_env(cls, micro: int, grad_accum: int = 1, environ: Mapping[str, str] | None = None) -> "Batch":
        """The script's defaults, overridden by the supervisor's variables.

        The global batch stays `micro * grad_accum` (or `TRAINSUP_GLOBAL_BATCH_SIZE`) when
        the supervisor shrinks the micro-batch.

        Raises:
            BatchError: a variable is not a positive whole number, or they disagree.
        """
        env = os.environ if environ is None else environ
        env_micro = _positive(env, ENV_BATCH_SIZE)
        env_accum = _positive(env, ENV_GRAD_ACCUM)
        env_global = _positive(env, ENV_GLOBAL_BATCH_SIZE)
        target = env_global or micro * grad_accum
        new_micro = env_micro or micro
        if env_accum:
            accum = env_accum
        elif env_micro:
            if target % new_micro:
                raise BatchError(f"The micro-batch {new_micro} does not divide the global batch {target}.")
            accum = target // new_micro
        else:
            accum = grad_accum
        if env_global and new_micro * accum != env_global:
            raise BatchError(
                f"{ENV_BATCH_SIZE} {new_micro} x {ENV_GRAD_ACCUM} {accum} is not {ENV_GLOBAL_BATCH_SIZE} {env_global}."
            )
        return cls(new_micro, accum)


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BatchError(f"{name}={raw!r} is not a whole number.") from None
    if value < 1:
        raise BatchError(f"{name}={raw!r} must be at least 1.")
    return value
