"""Micro-batch backoff, table-driven."""

from __future__ import annotations

import pytest

from trainsup.supervisor.batching import BatchConfig, after_oom, initial, to_env


def chain(global_batch: int, micro: int, factor: float = 0.5, min_micro: int = 1) -> list[int]:
    """The micro-batches of successive attempts until backoff gives up."""
    cfg: BatchConfig | None = initial(global_batch, micro)
    micros = []
    while cfg is not None:
        assert cfg.micro * cfg.accum == global_batch
        micros.append(cfg.micro)
        cfg = after_oom(cfg, factor, min_micro=min_micro)
    return micros


@pytest.mark.parametrize(
    "global_batch, micro, factor, min_micro, expected",
    [
        (256, 64, 0.5, 1, [64, 32, 16, 8, 4, 2, 1]),
        (256, 64, 0.5, 16, [64, 32, 16]),
        (96, 48, 0.5, 1, [48, 24, 12, 6, 3, 1]),
        (96, 48, 0.5, 4, [48, 24, 12, 6]),
        (7, 7, 0.5, 1, [7, 1]),
        (13, 13, 0.5, 2, [13]),
        (30, 30, 0.5, 1, [30, 15, 6, 3, 1]),
        (100, 50, 0.5, 1, [50, 25, 10, 5, 2, 1]),
        (60, 60, 0.75, 1, [60, 30, 20, 15, 10, 6, 4, 3, 2, 1]),
        (100, 100, 0.29, 1, [100, 25, 5, 1]),
        (1, 1, 0.5, 1, [1]),
    ],
)
def test_backoff_chain(global_batch, micro, factor, min_micro, expected) -> None:
    assert chain(global_batch, micro, factor, min_micro) == expected


@pytest.mark.parametrize(
    "current, factor, min_micro, expected",
    [
        (BatchConfig(256, 64, 4), 0.5, 1, BatchConfig(256, 32, 8)),
        (BatchConfig(96, 48, 2), 0.5, 1, BatchConfig(96, 24, 4)),
        (BatchConfig(96, 24, 4), 0.5, 1, BatchConfig(96, 12, 8)),
        (BatchConfig(96, 3, 32), 0.5, 1, BatchConfig(96, 1, 96)),
        (BatchConfig(12, 12, 1), 0.5, 8, None),
        (BatchConfig(12, 1, 12), 0.5, 1, None),
        (BatchConfig(100, 100, 1), 0.29, 1, BatchConfig(100, 25, 4)),
        (BatchConfig(60, 60, 1), 0.1, 1, BatchConfig(60, 6, 10)),
    ],
)
def test_after_oom(current, factor, min_micro, expected) -> None:
    assert after_oom(current, factor, min_micro=min_micro) == expected


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5, -0.5])
def test_factor_must_shrink(factor) -> None:
    with pytest.raises(ValueError, match="factor"):
        after_oom(BatchConfig(8, 8, 1), factor)


@pytest.mark.parametrize(
    "global_batch, micro, accum",
    [(8, 3, 3), (8, 0, 0), (0, 1, 0), (8, 4, 3)],
)
def test_batch_config_keeps_the_product_exact(global_batch, micro, accum) -> None:
    with pytest.raises(ValueError):
        BatchConfig(global_batch, micro, accum)


def test_initial() -> None:
    assert initial(256, 64) == BatchConfig(256, 64, 4)
    with pytest.raises(ValueError, match="does not divide"):
        initial(100, 32)


def test_to_env() -> None:
    assert to_env(BatchConfig(96, 24, 4)) == {
        "TRAINSUP_BATCH_SIZE": "24",
        "TRAINSUP_GRAD_ACCUM": "4",
        "TRAINSUP_GLOBAL_BATCH_SIZE": "96",
    }
