"""The simulated GPU file, with real processes standing in for jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainsup.gpu import GpuInfo, GpuProcess, GpuUnavailableError, SimulatedProbe
from trainsup.gpu.simulated import OutOfMemoryError, pid_alive, sim_allocate, sim_free, write_sim

GiB = 2**30


@pytest.fixture
def sim(tmp_path: Path) -> Path:
    path = tmp_path / "gpus.json"
    write_sim(path, 2, memory_total=40 * GiB, baseline_used=GiB)
    return path


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_file_format_is_the_documented_one(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({
        "gpus": [{"uuid": "GPU-sim-0", "name": "Simulated A100", "memory_total": 42949672960, "baseline_used": 0}],
        "processes": [{"pid": 0, "gpu_uuid": "GPU-sim-0", "used_memory": 1000}],
    }))
    probe = SimulatedProbe(path)
    assert probe.gpus() == [GpuInfo(0, "GPU-sim-0", "Simulated A100", 42949672960, 1000)]
    assert probe.processes() == [GpuProcess(0, "GPU-sim-0", 1000)]


def test_idle_gpus_show_their_baseline(sim: Path) -> None:
    gpus = SimulatedProbe(sim).gpus()
    assert [(g.index, g.uuid, g.memory_used) for g in gpus] == [(0, "GPU-sim-0", GiB), (1, "GPU-sim-1", GiB)]
    assert SimulatedProbe(sim).processes() == []


def test_allocations_of_a_live_process_add_up(sim: Path, sleeper: subprocess.Popen[bytes]) -> None:
    sim_allocate(sim, sleeper.pid, "GPU-sim-1", 2 * GiB)
    sim_allocate(sim, sleeper.pid, "GPU-sim-1", GiB)
    probe = SimulatedProbe(sim)
    assert probe.gpus()[1].memory_used == 4 * GiB
    assert probe.gpus()[0].memory_used == GiB
    assert probe.processes() == [GpuProcess(sleeper.pid, "GPU-sim-1", 3 * GiB)]


def test_sim_free_releases_a_process(sim: Path, sleeper: subprocess.Popen[bytes]) -> None:
    sim_allocate(sim, sleeper.pid, "GPU-sim-0", GiB)
    sim_allocate(sim, sleeper.pid, "GPU-sim-1", GiB)
    sim_free(sim, sleeper.pid, "GPU-sim-0")
    assert [p.gpu_uuid for p in SimulatedProbe(sim).processes()] == ["GPU-sim-1"]
    sim_free(sim, sleeper.pid)
    assert SimulatedProbe(sim).processes() == []
    assert [g.memory_used for g in SimulatedProbe(sim).gpus()] == [GiB, GiB]


def test_a_killed_process_frees_its_memory(sim: Path, sleeper: subprocess.Popen[bytes]) -> None:
    sim_allocate(sim, sleeper.pid, "GPU-sim-0", 10 * GiB)
    assert SimulatedProbe(sim).gpus()[0].memory_used == 11 * GiB
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    assert SimulatedProbe(sim).gpus()[0].memory_used == GiB
    assert SimulatedProbe(sim).processes() == []


def test_a_zombie_counts_as_gone(sim: Path, sleeper: subprocess.Popen[bytes]) -> None:
    sim_allocate(sim, sleeper.pid, "GPU-sim-0", GiB)
    sleeper.send_signal(signal.SIGKILL)
    # Not reaped yet: like a driver, the simulation frees memory when the process dies.
    for _ in range(200):
        if not pid_alive(sleeper.pid):
            break
        subprocess.run(["sleep", "0.01"])
    assert not pid_alive(sleeper.pid)
    assert SimulatedProbe(sim).processes() == []


def test_pid_zero_is_another_user_always_alive(sim: Path) -> None:
    sim_allocate(sim, 0, "GPU-sim-0", 5 * GiB)
    assert SimulatedProbe(sim).processes() == [GpuProcess(0, "GPU-sim-0", 5 * GiB)]
    assert SimulatedProbe(sim).gpus()[0].memory_used == 6 * GiB


def test_allocation_past_capacity_raises_a_cuda_like_oom(sim: Path) -> None:
    sim_allocate(sim, 0, "GPU-sim-0", 30 * GiB)
    with pytest.raises(OutOfMemoryError, match="CUDA out of memory"):
        sim_allocate(sim, 0, "GPU-sim-0", 10 * GiB)
    assert SimulatedProbe(sim).gpus()[0].memory_used == 31 * GiB


def test_a_job_script_in_another_process_can_allocate(sim: Path) -> None:
    script = (
        "import os, sys\n"
        "from trainsup.gpu.simulated import sim_allocate, sim_free\n"
        "sim_allocate(sys.argv[1], os.getpid(), 'GPU-sim-0', 1024)\n"
        "sim_allocate(sys.argv[1], 0, 'GPU-sim-0', 2048)\n"
        "sim_free(sys.argv[1], os.getpid())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(sim)], check=True)
    assert SimulatedProbe(sim).processes() == [GpuProcess(0, "GPU-sim-0", 2048)]


def test_concurrent_writers_lose_no_update(sim: Path) -> None:
    script = (
        "import sys\n"
        "from trainsup.gpu.simulated import sim_allocate\n"
        "for _ in range(25): sim_allocate(sys.argv[1], 0, 'GPU-sim-0', 1)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(sim)]) for _ in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    assert SimulatedProbe(sim).processes() == [GpuProcess(0, "GPU-sim-0", 100)]


def test_explicit_gpu_entries(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    write_sim(path, [{"uuid": "GPU-a", "memory_total": 8 * GiB}, {"uuid": "GPU-b", "name": "Tiny"}],
              processes=[GpuProcess(0, "GPU-b", 7)])
    gpus = SimulatedProbe(path).gpus()
    assert gpus[0] == GpuInfo(0, "GPU-a", "Simulated A100", 8 * GiB, 0)
    assert gpus[1].name == "Tiny" and gpus[1].memory_used == 7


@pytest.mark.parametrize("content", [None, "{not json", '{"gpus": [{"uuid": "x"}]}', '{"gpus": 3}',
                                     '{"gpus": [{"uuid": "x", "memory_total": -1}]}'])
def test_missing_or_malformed_file_is_one_clear_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "gpus.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GpuUnavailableError, match=r"^the simulated GPU file .+\.$") as info:
        SimulatedProbe(path).gpus()
    assert "\n" not in str(info.value)


def test_allocating_on_an_unknown_gpu_is_an_error(sim: Path) -> None:
    with pytest.raises(GpuUnavailableError, match="no GPU GPU-nope"):
        sim_allocate(sim, 0, "GPU-nope", 1)
