"""RNG states survive a checkpoint file: captured, saved, loaded with weights_only, restored."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import torch

from trainsup.trainer import rng


def _draws() -> tuple[float, float, float, float]:
    return random.random(), random.gauss(0, 1), float(np.random.standard_normal()), float(torch.rand(1))


def test_every_generator_resumes_where_it_was_after_a_round_trip_through_a_file() -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # a cached second Gaussian in each generator that keeps one
    np.random.standard_normal()
    state = rng.capture()
    expected = [_draws() for _ in range(3)]

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    _draws()  # move every generator on
    rng.restore(torch.load(buffer, weights_only=True))

    assert [_draws() for _ in range(3)] == expected


def test_the_captured_state_does_not_change_with_the_generators() -> None:
    state = rng.capture()
    python = state["python"]["state"].clone()
    keys = state["numpy"]["keys"].clone()
    for _ in range(1000):
        _draws()
    assert torch.equal(state["python"]["state"], python)
    assert torch.equal(state["numpy"]["keys"], keys)
    assert state["python"]["state"].dtype == torch.int64


def test_python_state_is_taken_again_once_the_generator_moves() -> None:
    first = rng.capture()["python"]["state"]
    assert rng.capture()["python"]["state"] is first  # not moved: the same tensor
    random.random()
    moved = rng.capture()["python"]["state"]
    assert not torch.equal(moved, first)
    assert torch.equal(moved, torch.tensor(random.getstate()[1], dtype=torch.int64))


def test_numpy_state_is_taken_again_once_the_generator_moves_or_is_reseeded() -> None:
    def numpy_state() -> tuple[Any, ...]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return kind, keys.astype(np.int64).tolist(), int(pos), int(has_gauss), float(cached)

    def captured() -> tuple[Any, ...]:
        npy = rng.capture()["numpy"]
        return npy["kind"], npy["keys"].tolist(), npy["pos"], npy["has_gauss"], npy["cached"]

    np.random.seed(1)
    assert captured() == captured() == numpy_state()
    assert rng.capture()["numpy"]["keys"] is rng.capture()["numpy"]["keys"]  # not moved: not taken again
    np.random.standard_normal()  # draws two, keeps one: position and cached Gaussian move
    assert captured() == numpy_state() and captured()[3] == 1
    np.random.seed(1)
    assert captured() == numpy_state() and captured()[3] == 0
    np.random.set_state(("MT19937", np.arange(624, dtype=np.uint32), 5, 1, 0.25))
    assert captured() == numpy_state()
