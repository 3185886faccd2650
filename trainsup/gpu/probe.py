"""What the daemon sees of the GPUs: devices, compute processes, one probe interface.

Implementations: `NvmlProbe` (the NVIDIA driver), `SimulatedProbe` (a JSON file, for
machines and tests without a GPU) and `NoGpuProbe` (neither is available).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trainsup.errors import TrainsupError

SIMULATED_GPUS_VAR = "TRAINSUP_SIMULATED_GPUS"


class GpuUnavailableError(TrainsupError):
    """The GPUs cannot be read: no driver, no library, or the driver failed."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on one GPU; `used_memory` is None where the driver won't say."""

    pid: int
    gpu_uuid: str
    used_memory: int | None


class GpuProbe(Protocol):
    """A source of GPU facts. Every method may raise `GpuUnavailableError`."""

    def gpus(self) -> list[GpuInfo]:
        """The GPUs in PCI bus order (the order CUDA_DEVICE_ORDER=PCI_BUS_ID gives)."""
        ...

    def processes(self) -> list[GpuProcess]:
        """The compute processes on every GPU."""
        ...

    def close(self) -> None: ...


class NoGpuProbe:
    """The machine has no usable GPU; `reason` says why, for the daemon's log."""

    def __init__(self, reason: str = "no GPU probe configured.") -> None:
        self.reason = reason

    def gpus(self) -> list[GpuInfo]:
        return []

    def processes(self) -> list[GpuProcess]:
        return []

    def close(self) -> None:
        pass


def probe_from_env(environ: Mapping[str, str]) -> GpuProbe:
    """The simulated GPUs if `TRAINSUP_SIMULATED_GPUS` names a file, else NVML, else none."""
    from trainsup.gpu.nvml import NvmlProbe
    from trainsup.gpu.simulated import SimulatedProbe

    simulated = environ.get(SIMULATED_GPUS_VAR, "")
    if simulated:
        return SimulatedProbe(Path(simulated))
    try:
        return NvmlProbe()
    except GpuUnavailableError as exc:
        return NoGpuProbe(str(exc))
