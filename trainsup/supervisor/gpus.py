"""The daemon's view of the GPUs: who holds which, each job's memory, when a grant ends.

A grant outlives its attempt until the attempt's processes have left the GPUs and
memory is back near the idle baseline (bounded wait), so a restart or the next job
never races a dying process for memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import structlog

from trainsup.gpu.probe import GpuInfo, GpuProbe, GpuProcess, GpuUnavailableError
from trainsup.supervisor.clock import Clock, SystemClock
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
class _SharedGrant:
    """A job that named the memory it needs (`min_free_memory`) and shares its GPUs."""

    uuids: list[str]
    promise: int  # bytes promised on each of its GPUs
    pids: set[int] = field(default_factory=set)  # its processes, as last sampled


@dataclass
class GpuBook:
    probe: GpuProbe
    clock: Clock = field(default_factory=SystemClock)  # paces the sampling
    grants: dict[str, str] = field(default_factory=dict)  # gpu uuid → job id holding it exclusively
    shared: dict[str, _SharedGrant] = field(default_factory=dict)  # job id → its shared grant
    baseline: dict[str, int] = field(default_factory=dict)
    releasing: dict[str, _Releasing] = field(default_factory=dict)  # job id → what it still holds
    gpus: list[GpuInfo] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    _sampled_at: float | None = None  # never yet

    def refresh(self, force: bool = False) -> None:
        """Read the GPUs, at most once per SAMPLE_INTERVAL_S unless forced."""
        now = self.clock.monotonic()
        if not force and self._sampled_at is not None and now - self._sampled_at < SAMPLE_INTERVAL_S:
            return
        self._sampled_at = now
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
        # An exclusive job also stays off GPUs that shared jobs hold; shared jobs only
        # avoid exclusive grants, and count what is promised to their neighbours as used.
        held = {**self.grants, **self._shared_holders()} if request.exclusive else self.grants
        uuids = place(request, self.gpus, self.processes, held, self.baseline, self._reserved())
        if uuids is not None:
            self.adopt(job_id, uuids, min_free_memory)
        return uuids

    def adopt(self, job_id: str, uuids: list[str], min_free_memory: int | None = None) -> None:
        """Record a grant: a new one, or a live attempt's that a restarted daemon finds."""
        if not uuids:
            return
        if min_free_memory is None:
            for uuid in uuids:
                self.grants[uuid] = job_id
        else:
            self.shared[job_id] = _SharedGrant(list(uuids), min_free_memory)

    def _shared_holders(self) -> dict[str, str]:
        return {uuid: job_id for job_id, grant in self.shared.items() for uuid in grant.uuids}

    def _reserved(self) -> dict[str, int]:
        """Per GPU, the memory promised to shared jobs beyond what their processes use yet."""
        reserved: dict[str, int] = {}
        for grant in self.shared.values():
            for uuid in grant.uuids:
                using = sum(p.used_memory or 0 for p in self.processes if p.gpu_uuid == uuid and p.pid in grant.pids)
                reserved[uuid] = reserved.get(uuid, 0) + max(0, grant.promise - using)
        return reserved

    def release_after(self, job_id: str, pids: set[int], now_monotonic: float) -> None:
        """The attempt ended: hold its GPUs until its processes have left them."""
        uuids = [u for u, holder in self.grants.items() if holder == job_id]
        if job_id in self.shared:
            uuids += self.shared[job_id].uuids
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
                    if self.grants.get(uuid) == job_id:
                        del self.grants[uuid]
                self.shared.pop(job_id, None)
                del self.releasing[job_id]

    def memory_of(self, job_id: str, pids: set[int]) -> int:
        """GPU memory used now by the processes `pids` of job `job_id` (remembered for its promise)."""
        self.refresh()
        if job_id in self.shared:
            self.shared[job_id].pids = set(pids)
        return sum(p.used_memory or 0 for p in self.processes if p.pid in pids)


def process_tree(root_pid: int) -> set[int]:
    """`root_pid` and all its live descendants."""
    try:
        root = psutil.Process(root_pid)
        return {root_pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()
