"""The GPUs as the NVIDIA driver reports them, through NVML (`import pynvml`)."""

from __future__ import annotations

from typing import Any

from trainsup.gpu.probe import GpuInfo, GpuProcess, GpuUnavailableError

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlProbe:
    """Reads devices and compute processes from NVML; initialises it once, on creation.

    Raises:
        GpuUnavailableError: NVML cannot be loaded or initialised, or a later query fails.
    """

    def __init__(self) -> None:
        if pynvml is None:
            raise GpuUnavailableError("NVML is not available because nvidia-ml-py is not installed.")
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as exc:
            raise GpuUnavailableError(f"NVML cannot start, so no NVIDIA GPU can be used ({exc}).") from None
        self._open = True

    def gpus(self) -> list[GpuInfo]:
        try:
            result = []
            for index, handle in enumerate(self._handles()):
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                result.append(GpuInfo(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                ))
            return result
        except pynvml.NVMLError as exc:
            raise GpuUnavailableError(f"NVML failed to list the GPUs ({exc}).") from None

    def processes(self) -> list[GpuProcess]:
        try:
            result = []
            for handle in self._handles():
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                for proc in _compute_processes(handle):
                    used = proc.usedGpuMemory
                    result.append(GpuProcess(int(proc.pid), uuid, None if used is None else int(used)))
            return result
        except pynvml.NVMLError as exc:
            raise GpuUnavailableError(f"NVML failed to list the GPU processes ({exc}).") from None

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def _handles(self) -> list[Any]:
        if not self._open:
            raise GpuUnavailableError("the NVML probe is closed.")
        count = pynvml.nvmlDeviceGetCount()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]


def _compute_processes(handle: Any) -> list[Any]:
    try:
        return pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError_FunctionNotFound:
        # Drivers older than R510 lack the _v3 entry point that the default uses.
        return pynvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)
