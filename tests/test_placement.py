"""GPU placement and the restart gate, table-driven."""

from __future__ import annotations

import pytest

from fakes import FakeClock
from trainsup.gpu import GpuInfo, GpuProcess
from trainsup.gpu.probe import NoGpuProbe
from trainsup.supervisor.gpus import SAMPLE_INTERVAL_S, GpuBook
from trainsup.supervisor.placement import (
    DEFAULT_TOLERANCE_BYTES,
    GpuRequest,
    gpu_env,
    gpus_released,
    idle_baseline,
    place,
    unplaceable,
)

GiB = 2**30
MiB = 2**20


def gpu(index: int, used: int = 0, total: int = 40 * GiB) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index}", "Test GPU", total, used)


def proc(pid: int, index: int, used: int | None = GiB) -> GpuProcess:
    return GpuProcess(pid, f"GPU-{index}", used)


FOUR = [gpu(0), gpu(1), gpu(2), gpu(3)]

PLACE_CASES = [
    # (name, request, gpus, processes, granted, extra kwargs, expected)
    ("cpu job needs nothing", GpuRequest(0), [], [], {}, {}, []),
    ("lowest index first", GpuRequest(2), FOUR, [], {}, {}, ["GPU-0", "GPU-1"]),
    ("order by index, not by list order", GpuRequest(1), [gpu(3), gpu(1)], [], {}, {}, ["GPU-1"]),
    ("granted gpu skipped", GpuRequest(2), FOUR, [], {"GPU-0": "job-a"}, {}, ["GPU-1", "GPU-2"]),
    ("gpu with a process skipped", GpuRequest(1), FOUR, [proc(7, 0)], {}, {}, ["GPU-1"]),
    ("another user's process counts", GpuRequest(1), FOUR[:2], [proc(0, 0, 1)], {}, {}, ["GPU-1"]),
    ("unknown-memory process counts", GpuRequest(1), FOUR[:2], [proc(9, 0, None)], {}, {}, ["GPU-1"]),
    ("not enough free gpus waits", GpuRequest(3), FOUR, [proc(1, 1), proc(2, 2)], {}, {}, None),
    ("more than the machine has waits", GpuRequest(5), FOUR, [], {}, {}, None),
    ("memory above baseline without a process is busy",
     GpuRequest(1), [gpu(0, used=2 * GiB), gpu(1)], [], {}, {}, ["GPU-1"]),
    ("memory within tolerance of zero is idle",
     GpuRequest(1), [gpu(0, used=DEFAULT_TOLERANCE_BYTES)], [], {}, {}, ["GPU-0"]),
    ("a display's memory is the baseline",
     GpuRequest(1), [gpu(0, used=2 * GiB)], [], {}, {"baseline": {"GPU-0": 2 * GiB - 100 * MiB}}, ["GPU-0"]),
    ("tight tolerance",
     GpuRequest(1), [gpu(0, used=2 * MiB), gpu(1)], [], {}, {"tolerance_bytes": MiB}, ["GPU-1"]),
    ("exclusive skips a gpu promised to a shared job",
     GpuRequest(1), FOUR[:2], [], {}, {"reserved": {"GPU-0": GiB}}, ["GPU-1"]),
    ("exclusive with a memory floor",
     GpuRequest(1, 30 * GiB), [gpu(0, total=16 * GiB), gpu(1)], [], {}, {}, ["GPU-1"]),
    ("shared fits beside a process",
     GpuRequest(1, 10 * GiB, exclusive=False), [gpu(0, used=20 * GiB)], [proc(5, 0, 20 * GiB)], {}, {}, ["GPU-0"]),
    ("shared needs the free memory",
     GpuRequest(1, 30 * GiB, exclusive=False), [gpu(0, used=20 * GiB), gpu(1, used=5 * GiB)], [], {}, {}, ["GPU-1"]),
    ("shared exactly enough",
     GpuRequest(1, 30 * GiB, exclusive=False), [gpu(0, used=10 * GiB)], [], {}, {}, ["GPU-0"]),
    ("shared never takes an exclusive grant",
     GpuRequest(1, GiB, exclusive=False), FOUR[:1], [], {"GPU-0": "job-a"}, {}, None),
    ("shared counts reservations as used",
     GpuRequest(1, 20 * GiB, exclusive=False), [gpu(0, used=10 * GiB), gpu(1)], [], {},
     {"reserved": {"GPU-0": 15 * GiB}}, ["GPU-1"]),
    ("shared without a floor takes any ungranted gpu",
     GpuRequest(2, None, exclusive=False), [gpu(0, used=39 * GiB), gpu(1)], [proc(1, 0)], {"GPU-1": "x"}, {}, None),
]


@pytest.mark.parametrize(
    "request_, gpus, processes, granted, kwargs, expected",
    [case[1:] for case in PLACE_CASES],
    ids=[case[0] for case in PLACE_CASES],
)
def test_place(request_, gpus, processes, granted, kwargs, expected) -> None:
    assert place(request_, gpus, processes, granted, **kwargs) == expected


def test_request_for_a_job_spec() -> None:
    assert GpuRequest.for_job(2, None) == GpuRequest(2, None, exclusive=True)
    assert GpuRequest.for_job(1, 8 * GiB) == GpuRequest(1, 8 * GiB, exclusive=False)
    with pytest.raises(ValueError):
        GpuRequest(-1)


@pytest.mark.parametrize(
    "request_, gpus, expected",
    [
        (GpuRequest(2), FOUR, None),
        (GpuRequest(5), FOUR, "the job asks for 5 GPUs but this machine has 4 GPUs."),
        (GpuRequest(1), [], "the job asks for 1 GPU but this machine has 0 GPUs."),
        (GpuRequest(2), [gpu(0)], "the job asks for 2 GPUs but this machine has 1 GPU."),
        (GpuRequest(1, 50 * GiB), FOUR, "the job needs 50 GiB free on 1 GPU but this machine has 0 GPUs that large."),
        (GpuRequest(1, 40 * GiB), FOUR, None),
    ],
)
def test_unplaceable(request_, gpus, expected) -> None:
    assert unplaceable(request_, gpus) == expected


@pytest.mark.parametrize(
    "uuids, expected",
    [
        ([], {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
        (["GPU-a"], {"CUDA_VISIBLE_DEVICES": "GPU-a", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
        (["GPU-a", "GPU-b"], {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ],
)
def test_gpu_env(uuids, expected) -> None:
    assert gpu_env(uuids) == expected


@pytest.mark.parametrize(
    "previous, gpus, processes, expected",
    [
        ({}, [gpu(0, 300 * MiB), gpu(1, 5 * GiB)], [proc(1, 1)], {"GPU-0": 300 * MiB}),
        ({"GPU-0": 200 * MiB}, [gpu(0, 300 * MiB)], [], {"GPU-0": 200 * MiB}),
        ({"GPU-0": 400 * MiB}, [gpu(0, 300 * MiB)], [], {"GPU-0": 300 * MiB}),
        ({"GPU-0": 400 * MiB}, [gpu(0, 9 * GiB)], [proc(1, 0)], {"GPU-0": 400 * MiB}),
    ],
)
def test_idle_baseline(previous, gpus, processes, expected) -> None:
    assert idle_baseline(previous, gpus, processes) == expected


RELEASED_CASES = [
    # (name, job_pids, uuids, processes, gpus, baseline, expected)
    ("gone and back to baseline", {10}, ["GPU-0"], [], [gpu(0, 300 * MiB)], {"GPU-0": 300 * MiB}, True),
    ("a job process still on the gpu", {10, 11}, ["GPU-0"], [proc(11, 0)], [gpu(0, GiB)], {}, False),
    ("a job process on another gpu", {10}, ["GPU-0"], [proc(10, 1)], [gpu(0), gpu(1, GiB)], {}, False),
    ("memory not yet reclaimed", {10}, ["GPU-0"], [], [gpu(0, 3 * GiB)], {"GPU-0": 0}, False),
    ("within tolerance", {10}, ["GPU-0"], [], [gpu(0, 400 * MiB)], {}, True),
    ("other users' memory is subtracted",
     {10}, ["GPU-0"], [proc(0, 0, 8 * GiB)], [gpu(0, 8 * GiB + 100 * MiB)], {}, True),
    ("other users' memory does not hide ours",
     {10}, ["GPU-0"], [proc(0, 0, 8 * GiB)], [gpu(0, 12 * GiB)], {}, False),
    ("unknown other memory: pids decide",
     {10}, ["GPU-0"], [proc(0, 0, None)], [gpu(0, 12 * GiB)], {}, True),
    ("vanished gpu is not released", {10}, ["GPU-0"], [], [], {}, False),
    ("every granted gpu must be back", {10}, ["GPU-0", "GPU-1"], [], [gpu(0), gpu(1, 2 * GiB)], {}, False),
    ("cpu job", {10}, [], [], [], {}, True),
]


@pytest.mark.parametrize(
    "job_pids, uuids, processes, gpus, baseline, expected",
    [case[1:] for case in RELEASED_CASES],
    ids=[case[0] for case in RELEASED_CASES],
)
def test_gpus_released(job_pids, uuids, processes, gpus, baseline, expected) -> None:
    assert gpus_released(job_pids, uuids, processes, gpus, baseline, DEFAULT_TOLERANCE_BYTES) == expected


def test_the_gpu_book_reads_the_gpus_at_most_once_a_second_by_its_clock() -> None:
    class CountingProbe(NoGpuProbe):
        reads = 0

        def gpus(self) -> list[GpuInfo]:
            self.reads += 1
            return [gpu(0)]

    probe, clock = CountingProbe(), FakeClock()
    book = GpuBook(probe, clock)
    book.refresh()
    book.refresh()
    assert probe.reads == 1 and [g.uuid for g in book.gpus] == ["GPU-0"]
    clock.advance(SAMPLE_INTERVAL_S)
    book.refresh()
    book.refresh(force=True)
    assert probe.reads == 3
