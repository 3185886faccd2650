"""The daemon's view of the GPUs: who holds which, each job's memory, when a grant ends.

A grant outlives its attempt until the attempt's processes have left the GPUs and
memory is back near the idle baseline (bounded wait), so a restart or the next job
never races a dying process for memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil
import structlog

from trainsup.gpu.probe import GpuInfo, GpuProbe, GpuProcess, GpuUnavailableError
from trainsup.supervisor.placement import GpuRequest, gpus_released, idle_baseline, place, unplaceable

log = structlog.get_logger("trainsup.gpus")

# NVIDIA's fault-tolerance launcher gives up waiting for memory after 50 s.
RELEASE_TIMEOUT_S = 50.0
SAMPLE_INTERVAL_S = 1.0


@dataclass
class _Releasing:
    uuids: list[str]
    pids: set[int]
    deadline: float


@dataclass
class GpuBook:
    probe: GpuProbe
    grants: dict[str, str] = field(default_factory=dict)  # gpu uuid → job id
    baseline: dict[str, int] = field(default_factory=dict)
    releasing: dict[str, _Releasing] = field(default_factory=dict)  # job id → what it still holds
    gpus: list[GpuInfo] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    _sampled_at: float = 0.0

    def refresh(self, force: bool = False) -> None:
        """Read the GPUs, at most once per SAMPLE_INTERVAL_S unless forced."""
        if not force and time.monotonic() - self._sampled_at < SAMPLE_INTERVAL_S:
            return
        self._sampled_at = time.monotonic()
        try:
            self.gpus, self.processes = self.probe.gpus(), self.probe.processes()
        except GpuUnavailableError as exc:
            log.warning("cannot read the GPUs", error=str(exc))
            self.gpus, self.processes = [], []
            return
        self.baseline = idle_baseline(self.baseline, self.gpus, self.processes)

    def impossible(self, gpus: int, min_free_memory: int | None) -> str | None:
        """Why a request can never be met here, or None."""
        self.refresh()
        return unplaceable(GpuRequest.for_job(gpus, min_free_memory), self.gpus)

    def grant(self, job_id: str, gpus: int, min_free_memory: int | None) -> list[str] | None:
        """Reserve GPUs for a job's next attempt, or None if it must wait."""
        if gpus == 0:
            return []
        if job_id in self.releasing:
            return None  # its previous attempt still holds memory
        self.refresh(force=True)
        request = GpuRequest.for_job(gpus, min_free_memory)
        uuids = place(request, self.gpus, self.processes, self.grants, self.baseline)
        if uuids is not None:
            for uuid in uuids:
                self.grants[uuid] = job_id
        return uuids

    def adopt(self, job_id: str, uuids: list[str]) -> None:
        for uuid in uuids:
            self.grants[uuid] = job_id

    def release_after(self, job_id: str, pids: set[int], now_monotonic: float) -> None:
        """The attempt ended: hold its GPUs until its processes have left them."""
        uuids = [u for u, holder in self.grants.items() if holder == job_id]
        if uuids:
            self.releasing[job_id] = _Releasing(uuids, pids, now_monotonic + RELEASE_TIMEOUT_S)

    def settle_releases(self, now_monotonic: float) -> None:
        for job_id, held in list(self.releasing.items()):
            self.refresh()
            released = gpus_released(held.pids, held.uuids, self.processes, self.gpus, self.baseline)
            if released or now_monotonic >= held.deadline:
                if not released:
                    log.warning("GPU memory not back to baseline; releasing anyway", job=job_id, gpus=held.uuids)
                for uuid in held.uuids:
                    self.grants.pop(uuid, None)
                del self.releasing[job_id]

    def memory_of(self, pids: set[int]) -> int:
        """GPU memory used now by the processes `pids`."""
        self.refresh()
        return sum(p.used_memory or 0 for p in self.processes if p.pid in pids)


def process_tree(root_pid: int) -> set[int]:
    """`root_pid` and all its live descendants."""
    try:
        root = psutil.Process(root_pid)
        return {root_pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()
