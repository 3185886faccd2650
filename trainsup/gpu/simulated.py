"""Simulated GPUs driven by a JSON file, for machines and tests without a GPU.

The file (named by TRAINSUP_SIMULATED_GPUS) looks like::

    {"gpus": [{"uuid": "GPU-sim-0", "name": "Simulated A100",
               "memory_total": 42949672960, "baseline_used": 0}],
     "processes": [{"pid": 1234, "gpu_uuid": "GPU-sim-0", "used_memory": 1000}]}

A GPU's used memory is its `baseline_used` plus the memory of its processes that are
alive, so a job that is SIGKILLed frees its memory as with a real driver. Pid 0 stands
for another user's process, always alive. Tests write the file with `write_sim`; job
scripts model their memory with `sim_allocate` / `sim_free` (stdlib only, so any
process that can import trainsup can call them).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainsup.durable import write_atomic
from trainsup.gpu.probe import GpuInfo, GpuProcess, GpuUnavailableError

DEFAULT_MEMORY = 40 * 2**30
DEFAULT_NAME = "Simulated A100"
OTHER_USER_PID = 0


class OutOfMemoryError(RuntimeError):
    """A simulated allocation did not fit; the message reads like torch's CUDA OOM."""


class SimulatedProbe:
    """A `GpuProbe` that reads the simulated GPU file on every call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def gpus(self) -> list[GpuInfo]:
        state = _read(self.path)
        used = _used_by_gpu(state)
        return [
            GpuInfo(
                index=index,
                uuid=gpu["uuid"],
                name=gpu["name"],
                memory_total=gpu["memory_total"],
                memory_used=gpu["baseline_used"] + used.get(gpu["uuid"], 0),
            )
            for index, gpu in enumerate(state["gpus"])
        ]

    def processes(self) -> list[GpuProcess]:
        return _live_processes(_read(self.path))

    def close(self) -> None:
        pass


def write_sim(
    path: Path | str,
    gpus: int | Sequence[Mapping[str, Any]] = 1,
    processes: Sequence[GpuProcess] = (),
    *,
    memory_total: int = DEFAULT_MEMORY,
    baseline_used: int = 0,
) -> None:
    """Write a simulated GPU file: `gpus` identical GPUs `GPU-sim-<i>`, or these GPU entries.

    Entries given as mappings need a `uuid`; `name`, `memory_total` and `baseline_used`
    default to the keyword arguments.
    """
    if isinstance(gpus, int):
        entries: Sequence[Mapping[str, Any]] = [{"uuid": f"GPU-sim-{i}"} for i in range(gpus)]
    else:
        entries = gpus
    state = {
        "gpus": [
            {
                "uuid": entry["uuid"],
                "name": entry.get("name", DEFAULT_NAME),
                "memory_total": int(entry.get("memory_total", memory_total)),
                "baseline_used": int(entry.get("baseline_used", baseline_used)),
            }
            for entry in entries
        ],
        "processes": [
            {"pid": p.pid, "gpu_uuid": p.gpu_uuid, "used_memory": p.used_memory or 0} for p in processes
        ],
    }
    path = Path(path)
    with _locked(path):
        _write(path, state)


def sim_allocate(path: Path | str, pid: int, gpu_uuid: str, nbytes: int) -> None:
    """Add `nbytes` to what process `pid` holds on `gpu_uuid`.

    Raises:
        OutOfMemoryError: the GPU has less than `nbytes` free; nothing is recorded.
        GpuUnavailableError: the file is missing or invalid, or names no such GPU.
    """
    path = Path(path)
    with _locked(path):
        state = _read(path)
        gpu = next((g for g in state["gpus"] if g["uuid"] == gpu_uuid), None)
        if gpu is None:
            raise GpuUnavailableError(f"the simulated GPU file {path} has no GPU {gpu_uuid}.")
        free = gpu["memory_total"] - gpu["baseline_used"] - _used_by_gpu(state).get(gpu_uuid, 0)
        if nbytes > free:
            raise OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {nbytes / 2**20:.2f} MiB "
                f"(simulated GPU {gpu_uuid}; {free / 2**20:.2f} MiB free)."
            )
        for proc in state["processes"]:
            if proc["pid"] == pid and proc["gpu_uuid"] == gpu_uuid:
                proc["used_memory"] += nbytes
                break
        else:
            state["processes"].append({"pid": pid, "gpu_uuid": gpu_uuid, "used_memory": nbytes})
        _write(path, state)


def sim_free(path: Path | str, pid: int, gpu_uuid: str | None = None) -> None:
    """Release everything process `pid` holds, on `gpu_uuid` or on every GPU."""
    path = Path(path)
    with _locked(path):
        state = _read(path)
        state["processes"] = [
            p for p in state["processes"]
            if not (p["pid"] == pid and (gpu_uuid is None or p["gpu_uuid"] == gpu_uuid))
        ]
        _write(path, state)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie counts as gone, as its GPU memory would be."""
    if pid == OTHER_USER_PID:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _live_processes(state: dict[str, Any]) -> list[GpuProcess]:
    uuids = {gpu["uuid"] for gpu in state["gpus"]}
    return [
        GpuProcess(p["pid"], p["gpu_uuid"], p["used_memory"])
        for p in state["processes"]
        if p["gpu_uuid"] in uuids and pid_alive(p["pid"])
    ]


def _used_by_gpu(state: dict[str, Any]) -> dict[str, int]:
    used: dict[str, int] = {}
    for proc in _live_processes(state):
        used[proc.gpu_uuid] = used.get(proc.gpu_uuid, 0) + (proc.used_memory or 0)
    return used


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A separate lock file: the data file's inode changes on every atomic replace.
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(state, indent=2).encode())


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GpuUnavailableError(f"the simulated GPU file {path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise GpuUnavailableError(f"the simulated GPU file {path} cannot be read ({exc}).") from None
    try:
        return _validated(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise GpuUnavailableError(f"the simulated GPU file {path} is malformed ({exc!r}).") from None


def _validated(data: Any) -> dict[str, Any]:
    def integer(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a non-negative integer, got {value!r}")
        return value

    gpus = [
        {
            "uuid": str(g["uuid"]),
            "name": str(g.get("name", DEFAULT_NAME)),
            "memory_total": integer(g["memory_total"]),
            "baseline_used": integer(g.get("baseline_used", 0)),
        }
        for g in data["gpus"]
    ]
    processes = [
        {"pid": integer(p["pid"]), "gpu_uuid": str(p["gpu_uuid"]), "used_memory": integer(p["used_memory"])}
        for p in data.get("processes", [])
    ]
    return {"gpus": gpus, "processes": processes}
