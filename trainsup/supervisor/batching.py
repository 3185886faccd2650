"""Micro-batch backoff after a CUDA OOM; the global batch (micro × accum) never changes."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchConfig:
    global_batch: int
    micro: int
    accum: int

    def __post_init__(self) -> None:
        if min(self.global_batch, self.micro, self.accum) < 1:
            raise ValueError("batch sizes and accumulation steps must be at least 1")
        if self.micro * self.accum != self.global_batch:
            raise ValueError(
                f"micro-batch {self.micro} × accumulation {self.accum} is not the global batch {self.global_batch}"
            )


def initial(global_batch: int, micro: int) -> BatchConfig:
    """The first attempt's batch: `micro` must divide `global_batch`."""
    if micro < 1 or global_batch % micro:
        raise ValueError(f"micro-batch {micro} does not divide the global batch {global_batch}")
    return BatchConfig(global_batch, micro, global_batch // micro)


def after_oom(current: BatchConfig, factor: float = 0.5, *, min_micro: int = 1) -> BatchConfig | None:
    """The batch for the attempt after an OOM, or None if it would go below `min_micro`.

    The new micro-batch is the largest divisor of the global batch that is at most
    `factor` × the current one, so the product stays exact (96/48 → 24 → 12 → 6 → 3 → 1).
    """
    if not 0 < factor < 1:
        raise ValueError(f"the backoff factor must be between 0 and 1, not {factor}")
    # The epsilon keeps 0.29 × 100 = 28.999999999999996 at 29.
    limit = math.floor(factor * current.micro + 1e-9)
    micro = next((m for m in range(limit, 0, -1) if current.global_batch % m == 0), None)
    if micro is None or micro < min_micro:
        return None
    return BatchConfig(current.global_batch, micro, current.global_batch // micro)


def to_env(cfg: BatchConfig) -> dict[str, str]:
    return {
        "TRAINSUP_BATCH_SIZE": str(cfg.micro),
        "TRAINSUP_GRAD_ACCUM": str(cfg.accum),
        "TRAINSUP_GLOBAL_BATCH_SIZE": str(cfg.global_batch),
    }
