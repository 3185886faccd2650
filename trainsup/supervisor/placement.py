"""Which GPUs a job gets, and when a dead attempt's GPUs are free again. Pure functions.

Two kinds of request:

* exclusive (the default, a job without `min_free_memory`): a GPU qualifies when no
  grant holds it, no compute process runs on it and its used memory is within
  `tolerance_bytes` of its idle baseline;
* shared (`exclusive=False`): a GPU qualifies when no exclusive grant holds it and its
  free memory, less what is promised to shared jobs not yet using it, is at least
  `min_free_memory`.

`granted` maps a GPU to the job holding it *exclusively*. Shared jobs show up through
their processes and `reserved`; a daemon that also lists shared grants in `granted`
just stops shared jobs from sharing a GPU.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from trainsup.gpu.probe import GpuInfo, GpuProcess
from trainsup.units import format_size

# NVIDIA's fault-tolerance launcher waits for GPU memory to drop back within 512 MB
# (`FaultToleranceConfig.gpu_memory_tolerance_mb=512.0`) before restarting ranks.
DEFAULT_TOLERANCE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class GpuRequest:
    count: int
    min_free_memory: int | None = None
    exclusive: bool = True

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("a GPU request cannot ask for a negative number of GPUs")
        if self.min_free_memory is not None and self.min_free_memory < 0:
            raise ValueError("min_free_memory cannot be negative")

    @classmethod
    def for_job(cls, gpus: int, min_free_memory: int | None) -> GpuRequest:
        """The request of a job spec: exclusive unless it names the memory it needs."""
        return cls(count=gpus, min_free_memory=min_free_memory, exclusive=min_free_memory is None)


def place(
    request: GpuRequest,
    gpus: list[GpuInfo],
    processes: list[GpuProcess],
    granted: Mapping[str, str],
    baseline: Mapping[str, int] | None = None,
    reserved: Mapping[str, int] | None = None,
    tolerance_bytes: int = DEFAULT_TOLERANCE_BYTES,
) -> list[str] | None:
    """The UUIDs of the GPUs to grant, lowest index first, or None if the job must wait.

    Args:
        baseline: each GPU's used memory when idle (see `idle_baseline`); 0 if absent.
        reserved: bytes promised to shared jobs on each GPU beyond what they use yet;
            a GPU with a reservation is not free for an exclusive job.
    """
    if request.count == 0:
        return []
    baseline = baseline or {}
    reserved = reserved or {}
    busy = {p.gpu_uuid for p in processes}
    chosen = []
    for gpu in sorted(gpus, key=lambda g: g.index):
        if gpu.uuid in granted:
            continue
        free = gpu.memory_total - gpu.memory_used - reserved.get(gpu.uuid, 0)
        if request.exclusive:
            if gpu.uuid in busy or reserved.get(gpu.uuid, 0) > 0:
                continue
            if gpu.memory_used > baseline.get(gpu.uuid, 0) + tolerance_bytes:
                continue
        if request.min_free_memory is not None and free < request.min_free_memory:
            continue
        chosen.append(gpu.uuid)
        if len(chosen) == request.count:
            return chosen
    return None


def unplaceable(request: GpuRequest, gpus: list[GpuInfo]) -> str | None:
    """Why `request` can never be placed on this machine, as one sentence, or None."""
    if request.count > len(gpus):
        return f"the job asks for {_gpus(request.count)} but this machine has {_gpus(len(gpus))}."
    if request.min_free_memory is not None:
        big_enough = [g for g in gpus if g.memory_total >= request.min_free_memory]
        if len(big_enough) < request.count:
            return (
                f"the job needs {format_size(request.min_free_memory)} free on {_gpus(request.count)} "
                f"but this machine has {_gpus(len(big_enough))} that large."
            )
    return None


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("" if count == 1 else "s")


def gpu_env(uuids: Iterable[str]) -> dict[str, str]:
    """The environment that shows an attempt exactly its GPUs (none for a CPU job)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(uuids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def idle_baseline(
    previous: Mapping[str, int], gpus: list[GpuInfo], processes: list[GpuProcess]
) -> dict[str, int]:
    """Each GPU's lowest used memory seen while no compute process ran on it.

    The daemon calls this every tick from start-up; memory that a display or the driver
    keeps is then not mistaken for a job's. GPUs never seen idle are absent (baseline 0).
    """
    busy = {p.gpu_uuid for p in processes}
    result = dict(previous)
    for gpu in gpus:
        if gpu.uuid not in busy:
            result[gpu.uuid] = min(gpu.memory_used, result.get(gpu.uuid, gpu.memory_used))
    return result


def gpus_released(
    job_pids: Collection[int],
    uuids: Collection[str],
    processes: list[GpuProcess],
    gpus: list[GpuInfo],
    baseline: Mapping[str, int],
    tolerance_bytes: int = DEFAULT_TOLERANCE_BYTES,
) -> bool:
    """Whether a finished attempt has let go of its GPUs, so the next one may start.

    True when none of `job_pids` is a GPU process any more and each of `uuids`, less the
    memory of other processes on it, is back within `tolerance_bytes` of its baseline.
    A GPU where another process's usage is unknown is judged by the pids alone. A GPU
    that has disappeared is not released. The daemon bounds the wait itself (NVIDIA's
    launcher gives up after `gpu_memory_reclaim_timeout=50.0` seconds).
    """
    if any(p.pid in job_pids for p in processes):
        return False
    by_uuid = {g.uuid: g for g in gpus}
    for uuid in uuids:
        gpu = by_uuid.get(uuid)
        if gpu is None:
            return False
        others = [p for p in processes if p.gpu_uuid == uuid]
        if any(p.used_memory is None for p in others):
            continue
        job_memory = gpu.memory_used - sum(p.used_memory or 0 for p in others)
        if job_memory > baseline.get(uuid, 0) + tolerance_bytes:
            return False
    return True
