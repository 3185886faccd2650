"""The one batch type: micro-batch backoff (daemon) and the environment (trainer), table-driven."""

from __future__ import annotations

import pytest

from trainsup.batch import Batch, BatchError


def chain(global_batch: int, micro: int, factor: float = 0.5, min_micro: int = 1) -> list[int]:
    """The micro-batches of successive attempts until backoff gives up."""
    batch: Batch | None = Batch.of_global(global_batch, micro)
    micros = []
    while batch is not None:
        assert batch.global_batch == global_batch
        micros.append(batch.micro)
        batch = batch.after_oom(factor, min_micro=min_micro)
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
        (Batch(64, 4), 0.5, 1, Batch(32, 8)),
        (Batch(48, 2), 0.5, 1, Batch(24, 4)),
        (Batch(24, 4), 0.5, 1, Batch(12, 8)),
        (Batch(3, 32), 0.5, 1, Batch(1, 96)),
        (Batch(12, 1), 0.5, 8, None),
        (Batch(1, 12), 0.5, 1, None),
        (Batch(100, 1), 0.29, 1, Batch(25, 4)),
        (Batch(60, 1), 0.1, 1, Batch(6, 10)),
    ],
)
def test_after_oom(current, factor, min_micro, expected) -> None:
    assert current.after_oom(factor, min_micro=min_micro) == expected


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5, -0.5])
def test_factor_must_shrink(factor) -> None:
    with pytest.raises(BatchError, match="factor"):
        Batch(8, 1).after_oom(factor)


@pytest.mark.parametrize("micro, accum", [(0, 1), (1, 0), (-4, 2)])
def test_sizes_are_positive(micro, accum) -> None:
    with pytest.raises(BatchError):
        Batch(micro, accum)


def test_of_global() -> None:
    assert Batch.of_global(256, 64) == Batch(64, 4)
    with pytest.raises(BatchError, match="does not divide"):
        Batch.of_global(100, 32)


def test_dict_round_trip_and_the_old_key() -> None:
    assert Batch(24, 4).as_dict() == {"micro": 24, "grad_accum": 4, "global": 96}
    assert Batch.from_dict(Batch(24, 4).as_dict()) == Batch(24, 4)
    assert Batch.from_dict({"global": 96, "micro": 24, "accum": 4}) == Batch(24, 4)  # schema 1


def test_to_env() -> None:
    assert Batch(24, 4).to_env() == {
        "TRAINSUP_BATCH_SIZE": "24",
        "TRAINSUP_GRAD_ACCUM": "4",
        "TRAINSUP_GLOBAL_BATCH_SIZE": "96",
    }


# --- what the trainer reads: the script's defaults under the supervisor's variables ----


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, Batch(64, 2)),
        (Batch(32, 4).to_env(), Batch(32, 4)),
        ({"TRAINSUP_BATCH_SIZE": "16"}, Batch(16, 8)),  # the global batch 128 stays
        ({"TRAINSUP_BATCH_SIZE": "16", "TRAINSUP_GLOBAL_BATCH_SIZE": "64"}, Batch(16, 4)),
        ({"TRAINSUP_GRAD_ACCUM": "3"}, Batch(64, 3)),
    ],
)
def test_from_env(env, expected) -> None:
    assert Batch.from_env(64, 2, env) == expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TRAINSUP_BATCH_SIZE": "many"}, "not a whole number"),
        ({"TRAINSUP_BATCH_SIZE": "0"}, "at least 1"),
        ({"TRAINSUP_BATCH_SIZE": "48"}, "does not divide"),
        ({"TRAINSUP_BATCH_SIZE": "16", "TRAINSUP_GRAD_ACCUM": "2", "TRAINSUP_GLOBAL_BATCH_SIZE": "64"}, "is not"),
    ],
)
def test_from_env_rejects_what_cannot_be(env, message) -> None:
    with pytest.raises(BatchError, match=message):
        Batch.from_env(64, 2, env)
