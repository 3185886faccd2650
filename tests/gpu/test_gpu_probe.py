"""Choosing a probe, and NVML's failure path on a machine without a driver."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trainsup.gpu import (
    GpuInfo,
    GpuProcess,
    GpuUnavailableError,
    NoGpuProbe,
    NvmlProbe,
    SimulatedProbe,
    nvml,
    probe_from_env,
)
from trainsup.gpu.simulated import write_sim


def _nvml_works() -> bool:
    try:
        NvmlProbe().close()
    except GpuUnavailableError:
        return False
    return True


HAS_NVML = _nvml_works()


def test_simulated_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    write_sim(path, 3)
    probe = probe_from_env({"TRAINSUP_SIMULATED_GPUS": str(path)})
    assert isinstance(probe, SimulatedProbe)
    assert [g.uuid for g in probe.gpus()] == ["GPU-sim-0", "GPU-sim-1", "GPU-sim-2"]


@pytest.mark.skipif(HAS_NVML, reason="this machine has a working NVIDIA driver")
def test_without_a_driver_nvml_fails_in_one_sentence() -> None:
    with pytest.raises(GpuUnavailableError) as info:
        NvmlProbe()
    message = str(info.value)
    assert message.startswith("NVML cannot start") and message.endswith(".") and "\n" not in message


@pytest.mark.skipif(HAS_NVML, reason="this machine has a working NVIDIA driver")
def test_without_a_driver_or_simulation_there_are_no_gpus() -> None:
    probe = probe_from_env({})
    assert isinstance(probe, NoGpuProbe)
    assert probe.gpus() == [] and probe.processes() == []
    assert "NVML" in probe.reason
    probe.close()


@pytest.mark.skipif(not HAS_NVML, reason="no NVIDIA driver on this machine")
def test_nvml_lists_real_gpus() -> None:
    probe = probe_from_env({})
    assert isinstance(probe, NvmlProbe)
    gpus = probe.gpus()
    assert gpus and [g.index for g in gpus] == list(range(len(gpus)))
    assert all(g.uuid.startswith(("GPU-", "MIG-")) and 0 <= g.memory_used <= g.memory_total for g in gpus)
    uuids = {g.uuid for g in gpus}
    assert all(p.gpu_uuid in uuids for p in probe.processes())
    probe.close()
    with pytest.raises(GpuUnavailableError):
        probe.gpus()


class FakeNvml:
    """Just enough of pynvml to drive `NvmlProbe`'s success path without a driver."""

    class NVMLError(Exception):
        pass

    class NVMLError_FunctionNotFound(NVMLError):
        pass

    def __init__(self, old_driver: bool = False) -> None:
        self.old_driver = old_driver
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes | str:
        return b"GPU-aaaa" if handle == 0 else "GPU-bbbb"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 2**30, used=(handle + 1) * 2**30, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        if self.old_driver:
            raise self.NVMLError_FunctionNotFound("Function Not Found")
        return self.nvmlDeviceGetComputeRunningProcesses_v2(handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=42, usedGpuMemory=None if handle else 123)]


@pytest.mark.parametrize("old_driver", [False, True])
def test_nvml_probe_reads_devices_and_processes(monkeypatch: pytest.MonkeyPatch, old_driver: bool) -> None:
    fake = FakeNvml(old_driver)
    monkeypatch.setattr(nvml, "pynvml", fake)
    probe = NvmlProbe()
    assert probe.gpus() == [
        GpuInfo(0, "GPU-aaaa", "NVIDIA H100", 80 * 2**30, 2**30),
        GpuInfo(1, "GPU-bbbb", "NVIDIA H100", 80 * 2**30, 2 * 2**30),
    ]
    assert probe.processes() == [GpuProcess(42, "GPU-aaaa", 123), GpuProcess(42, "GPU-bbbb", None)]
    probe.close()
    probe.close()
    assert fake.shutdowns == 1
    with pytest.raises(GpuUnavailableError, match="closed"):
        probe.gpus()


def test_nvml_errors_at_runtime_become_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()

    def fallen_off_the_bus() -> int:
        raise fake.NVMLError("GPU is lost")

    fake.nvmlDeviceGetCount = fallen_off_the_bus  # type: ignore[method-assign]
    monkeypatch.setattr(nvml, "pynvml", fake)
    with pytest.raises(GpuUnavailableError, match=r"^NVML failed to list the GPUs \(GPU is lost\)\.$"):
        NvmlProbe().gpus()
