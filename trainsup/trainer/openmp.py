"""The OpenMP runtime torch runs its CPU threads on, when it is GNU's (`libgomp`, in the
PyPI wheels for Linux): letting its idle workers go.

After each parallel region libgomp's workers spin on their cores for a while (~3 ms here,
its default wait policy) before they sleep. A background save hands its writer a core the
moment the loop goes on, and on a machine whose every core trains, the writer waits for
that spin to end: 10 MB on the 2-core VM became durable after 1.3-1.4x a synchronous save
in the same loop; with the workers let go, 1.1x.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: let the threads go, keep the settings


def release_idle_workers() -> bool:
    """End the calling thread's OpenMP workers (`omp_pause_resource_all`, OpenMP 5.0);
    its next parallel region starts new ones (~50 µs a thread). Call it outside a
    parallel region, from the thread that runs torch's ops. False where the runtime is
    not libgomp or cannot pause (nothing is done then)."""
    pause = _pause_function()
    return pause is not None and pause(_OMP_PAUSE_SOFT) == 0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity; all of them where that is unknown)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def find_runtime() -> bool:
    """Look the runtime up now (once; a few hundred µs): whether it can let workers go."""
    return _pause_function() is not None


@functools.cache
def _pause_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    for library in _loaded_libgomp():
        pause = getattr(library, "omp_pause_resource_all", None)  # GCC 9 and later
        if pause is not None:
            pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
            return pause
    return None


def _loaded_libgomp() -> list[ctypes.CDLL]:
    """The libgomp this process already loaded: the one torch bundles (renamed by some
    wheels, e.g. `libgomp-a34b3233.so.1`), else the system's. Never loads one."""
    import torch  # only for where its libraries are; already imported by the caller

    bundled = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    found = []
    for name in [*map(str, bundled), "libgomp.so.1"]:
        try:
            found.append(ctypes.CDLL(name, mode=os.RTLD_NOLOAD))
        except OSError:  # not loaded in this process
            continue
    return found
