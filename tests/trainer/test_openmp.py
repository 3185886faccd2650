"""Letting torch's idle OpenMP workers go, so that a background save's writer gets a core
at once on a CPU loop that keeps every core busy (`trainsup.trainer.openmp`)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from trainsup.trainer import Saving, Session, openmp
from trainsup.trainer.environment import ENV_OPENMP_RELEASE

CPUS = openmp.usable_cpus()

pytestmark = [
    pytest.mark.skipif(not openmp.find_runtime(), reason="torch's OpenMP runtime here is not GNU's libgomp"),
    pytest.mark.skipif(CPUS < 2, reason="one CPU: torch runs no OpenMP worker"),
]


def native_threads() -> set[int]:
    """The thread ids of this process that Python did not start (OpenMP's workers among them)."""
    python = {thread.native_id for thread in threading.enumerate()}
    return {int(tid) for tid in os.listdir("/proc/self/task")} - python


def gone(tids: set[int], timeout: float = 5.0) -> bool:
    """All of `tids` have exited (a joined thread leaves /proc a moment later)."""
    deadline = time.monotonic() + timeout
    while tids & native_threads():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def workers_of_a_parallel_op(threads: int) -> tuple[set[int], torch.Tensor]:
    """Run a matmul big enough for OpenMP on `threads` threads; the workers it started and its result."""
    torch.set_num_threads(threads)
    before = native_threads()
    a = torch.arange(512 * 512, dtype=torch.float32).reshape(512, 512) / 1e5
    product = a @ a
    return native_threads() - before, product


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    openmp.release_idle_workers()  # start from no workers: the ones a test sees are its own
    yield
    torch.set_num_threads(threads)


def test_release_ends_the_workers_and_the_next_parallel_op_starts_new_ones() -> None:
    workers, product = workers_of_a_parallel_op(CPUS)
    assert workers, "the matmul ran on one thread"
    assert openmp.release_idle_workers()
    assert gone(workers)
    again, product_again = workers_of_a_parallel_op(CPUS)
    assert again and not again & workers
    assert torch.equal(product, product_again)


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def session_for(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                release: str | None = None) -> Session:
    environ = {"TRAINSUP_SNAPSHOTS": "0", **({ENV_OPENMP_RELEASE: release} if release is not None else {})}
    return Session(model, optimizer, checkpoint_dir=path, handle_signals=False, environ=environ,
                   saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True))


def test_a_background_save_on_a_loop_that_fills_every_core_lets_the_workers_go(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path / "ck", model, optimizer) as session:
        session.save()
        session.wait_for_save()  # the save's own threads exist from here on
        workers, _ = workers_of_a_parallel_op(CPUS)
        assert workers
        session.save()
        assert gone(workers)
        assert torch.get_num_threads() == CPUS - 1  # one lent to the writer
        assert session.wait_for_save() is not None
        assert torch.get_num_threads() == CPUS


@pytest.mark.skipif(CPUS < 3, reason="needs a core that torch's threads leave free (3 CPUs or more)")
def test_with_a_core_to_spare_the_workers_stay(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path / "ck", model, optimizer) as session:
        session.save()
        session.wait_for_save()
        workers, _ = workers_of_a_parallel_op(CPUS - 1)
        session.save()
        assert workers <= native_threads()
        session.wait_for_save()


@pytest.mark.parametrize("release", ["0", "off"])
def test_turned_off_in_the_environment_the_workers_stay(tmp_path: Path, release: str) -> None:
    model, optimizer = make()
    with session_for(tmp_path / "ck", model, optimizer, release) as session:
        session.save()
        session.wait_for_save()
        workers, _ = workers_of_a_parallel_op(CPUS)
        assert workers
        session.save()
        assert workers <= native_threads()
        assert torch.get_num_threads() == CPUS - 1  # a thread is still lent to the writer
        assert session.wait_for_save() is not None
