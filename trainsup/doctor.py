"""`trainsup doctor`: is this workstation set up to keep jobs alive?

Each check reads files and asks the kernel; none needs a running service manager,
and none changes anything (the daemon-lock probe releases at once what it gets).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from trainsup import diskspace
from trainsup.commands.common import daemon_pid
from trainsup.paths import StateDir
from trainsup.service import (
    LINGER_DIR,
    SYSTEM_UNIT_DIR,
    Scope,
    WANTS_DIR,
    current_user,
    linger_enabled,
    template_file,
    unit_name,
    user_unit_dir,
)

GiB = 2**30
MIN_FREE_BYTES = 10 * GiB
MIN_FREE_FRACTION = 0.05


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable here
    detail: str


def run_checks(
    state_dir: StateDir,
    checkpoint_dirs: list[Path],
    *,
    user: str | None = None,
    user_units: Path | None = None,
    system_units: Path = SYSTEM_UNIT_DIR,
    linger_dir: Path = LINGER_DIR,
    nvml: Callable[[], ModuleType] | None = None,
) -> list[Check]:
    user = user or current_user()
    checks = [
        check_state_dir(state_dir.root),
        check_daemon(state_dir.daemon_lock),
        check_nvml(nvml),
        check_service(user, user_units or user_unit_dir(), system_units),
        check_linger(user, linger_dir, system_unit_enabled=_system_unit_enabled(user, system_units)),
        check_disk_full(state_dir),
        check_state_size(state_dir),
    ]
    seen: set[Path] = set()
    for path in (state_dir.root, *checkpoint_dirs):
        if path not in seen:
            seen.add(path)
            checks.append(check_disk(path))
    return checks


def check_state_dir(root: Path) -> Check:
    name = "state_dir"
    try:
        st = root.stat()
    except FileNotFoundError:
        return Check(name, None, f"{root} does not exist yet; the daemon or the first submit creates it.")
    except OSError as exc:
        return Check(name, False, f"{root} cannot be read: {exc.strerror}.")
    if not stat.S_ISDIR(st.st_mode):
        return Check(name, False, f"{root} is not a directory.")
    if st.st_uid != os.geteuid():
        return Check(name, False, f"{root} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}).")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        fix = f"chmod 700 {shlex.quote(str(root))}"
        return Check(name, False, f"{root} has mode {mode:04o}, not 0700; run `{fix}`.")
    return Check(name, True, f"{root} exists, is yours and has mode 0700.")


def check_state_size(state_dir: StateDir) -> Check:
    """How much the state dir holds, and how much of it the jobs' dirs (`trainsup clean` frees those)."""
    from trainsup.cleanup import disk_usage, format_bytes

    if not state_dir.root.is_dir():
        return Check("state_size", None, f"{state_dir.root} does not exist yet.")
    total, jobs = disk_usage([state_dir.root]), disk_usage([state_dir.root / "jobs"])
    return Check("state_size", True, f"{format_bytes(total)} in {state_dir.root} ({format_bytes(jobs)} in job dirs: "
                 "logs, run dirs, default checkpoints; `trainsup clean --all --dry-run` shows what could go).")


def check_daemon(lock_path: Path) -> Check:
    name = "daemon"
    try:
        pid = daemon_pid(lock_path)
    except OSError as exc:
        return Check(name, False, f"cannot probe the daemon lock {lock_path}: {exc.strerror}.")
    if pid is None:
        return Check(name, False, "no daemon is running; `trainsup daemon` or the service starts one.")
    return Check(name, True, f"the daemon is running (pid {pid})." if pid else "the daemon is running.")


def check_disk_full(state_dir: StateDir) -> Check:
    """Can the daemon record what happens? Its own word (`disk-status`) and the free space say."""
    name = "disk_full"
    if (sentence := diskspace.notice(state_dir)) is not None:
        return Check(name, False, sentence)
    return Check(name, True, f"there is room to record jobs under {state_dir.root}.")


def check_nvml(nvml: Callable[[], ModuleType] | None = None) -> Check:
    """NVML answers: device count and driver version, else its one-line reason.

    A missing NVML library means no NVIDIA driver, i.e. a CPU-only machine (n/a);
    any other failure (e.g. a driver/library version mismatch after a driver
    upgrade without reboot) is a real problem.
    """
    name = "nvml"
    try:
        pynvml = nvml() if nvml else _import_pynvml()
    except ImportError:
        return Check(name, False, "the nvidia-ml-py package (pynvml) is not installed.")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if isinstance(exc, getattr(pynvml, "NVMLError_LibraryNotFound", ())):
            return Check(name, None, "no NVIDIA driver here (NVML library not found); only CPU jobs can run.")
        return Check(name, False, f"NVML does not start: {exc}.")
    try:
        count = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as exc:
        return Check(name, False, f"NVML starts but cannot list GPUs: {exc}.")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    driver = driver.decode() if isinstance(driver, bytes) else driver
    plural = "GPU" if count == 1 else "GPUs"
    return Check(name, True, f"NVML sees {count} {plural} (driver {driver}).")


def check_service(user: str, user_units: Path, system_units: Path) -> Check:
    """Installed and enabled, judged from unit files and `.wants` links alone."""
    name = "service"
    installed = [unit for unit in _units(user, user_units, system_units) if unit[1].is_file()]
    if not installed:
        return Check(name, False, "no trainsup unit is installed; run `trainsup service install --user`.")
    for scope, unit, wants in installed:
        if os.path.lexists(wants):
            label = unit_name(scope, user)
            if (missing := _missing_command(unit)) is not None:
                detail = f"{label} runs {missing}, which is gone; run `trainsup service install` again."
                return Check(name, False, detail)
            return Check(name, True, f"{label} is installed and enabled ({unit}).")
    scope, unit, _ = installed[0]
    enable = f"{'systemctl --user' if scope == 'user' else 'sudo systemctl'} enable --now {unit_name(scope, user)}"
    return Check(name, False, f"{unit} is installed but not enabled; run `{enable}`.")


def check_linger(user: str, linger_dir: Path = LINGER_DIR, *, system_unit_enabled: bool = False) -> Check:
    name = "linger"
    if system_unit_enabled:
        return Check(name, None, "not needed: the system unit starts the daemon at boot without a login.")
    if linger_enabled(user, linger_dir):
        return Check(name, True, f"lingering is on for {user}, so jobs keep running after logout.")
    detail = f"lingering is off for {user}, so jobs stop at logout; run `loginctl enable-linger {user}`."
    return Check(name, False, detail)


def check_disk(
    path: Path, *, min_free_bytes: int = MIN_FREE_BYTES, min_free_fraction: float = MIN_FREE_FRACTION
) -> Check:
    name = f"disk:{path}"
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return Check(name, False, f"cannot measure free space at {path}: {exc.strerror}.")
    if not usage.total:  # some FUSE mounts report no blocks at all: unknown, not full
        return Check(name, None, f"the file system at {path} does not report its size.")
    fraction = usage.free / usage.total
    summary = f"{usage.free / GiB:.1f} GiB free ({fraction:.0%}) at {path}"
    if usage.free < min_free_bytes or fraction < min_free_fraction:
        return Check(name, False, f"only {summary}; checkpoints may fail to save.")
    return Check(name, True, f"{summary}.")


def _units(user: str, user_units: Path, system_units: Path) -> list[tuple[Scope, Path, Path]]:
    """(scope, unit file, its `.wants` link) for the user unit and the system template."""
    bases: tuple[tuple[Scope, Path], ...] = (("user", user_units), ("system", system_units))
    return [
        (scope, base / template_file(scope), base / WANTS_DIR[scope] / unit_name(scope, user))
        for scope, base in bases
    ]


def _system_unit_enabled(user: str, system_units: Path) -> bool:
    _, unit, wants = _units(user, system_units, system_units)[1]
    return unit.is_file() and os.path.lexists(wants)


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _missing_command(unit: Path) -> str | None:
    """The ExecStart= command of `unit` if it no longer exists (a deleted venv)."""
    for line in unit.read_text(errors="replace").splitlines():
        if line.startswith("ExecStart="):
            try:
                words = shlex.split(line.removeprefix("ExecStart="))
            except ValueError:
                return None
            command = words[0].replace("%%", "%") if words else ""
            if command.startswith("/") and not os.access(command, os.X_OK):
                return command
            return None
    return None
