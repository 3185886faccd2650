"""GPU access for the daemon: one probe interface, NVML and simulated implementations."""

from trainsup.gpu.nvml import NvmlProbe
from trainsup.gpu.probe import (
    SIMULATED_GPUS_VAR,
    GpuInfo,
    GpuProbe,
    GpuProcess,
    GpuUnavailableError,
    NoGpuProbe,
    probe_from_env,
)
from trainsup.gpu.simulated import SimulatedProbe

__all__ = [
    "SIMULATED_GPUS_VAR",
    "GpuInfo",
    "GpuProbe",
    "GpuProcess",
    "GpuUnavailableError",
    "NoGpuProbe",
    "NvmlProbe",
    "SimulatedProbe",
    "probe_from_env",
]
