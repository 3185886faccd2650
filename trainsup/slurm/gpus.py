"""Inside a Slurm allocation, the GPUs trainsup may place a job on are the ones Slurm gave it.

Slurm names them in CUDA_VISIBLE_DEVICES: indices (in NVML's PCI bus order, or 0..N-1
where `ConstrainDevices=yes` hides the others from NVML too) or UUIDs. Without the
filter, trainsup's placement would see every GPU of a node whose devices are not
constrained, other jobs' included.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainsup.gpu.probe import GpuInfo, GpuProbe, GpuProcess


class AllocatedGpus:
    """A `GpuProbe` showing only the GPUs in `visible` (indices or UUIDs, as CUDA_VISIBLE_DEVICES has them)."""

    def __init__(self, probe: GpuProbe, visible: list[str]):
        self.probe = probe
        self.visible = [entry.strip() for entry in visible if entry.strip()]

    def _allowed(self, gpu: GpuInfo) -> bool:
        return any(entry == str(gpu.index) or (entry.startswith("GPU-") and gpu.uuid.startswith(entry))
                   for entry in self.visible)

    def gpus(self) -> list[GpuInfo]:
        return [gpu for gpu in self.probe.gpus() if self._allowed(gpu)]

    def processes(self) -> list[GpuProcess]:
        uuids = {gpu.uuid for gpu in self.gpus()}
        return [process for process in self.probe.processes() if process.gpu_uuid in uuids]

    def close(self) -> None:
        self.probe.close()


def allocated_probe(environ: Mapping[str, str]) -> GpuProbe | None:
    """The probe for `trainsup run` inside a Slurm job that was given GPUs; None elsewhere (the usual probe)."""
    from trainsup.gpu.probe import probe_from_env

    if not environ.get("SLURM_JOB_ID") or "CUDA_VISIBLE_DEVICES" not in environ:
        return None
    return AllocatedGpus(probe_from_env(environ), environ["CUDA_VISIBLE_DEVICES"].split(","))
