"""`trainsup doctor` checks against real files, real locks and fake NVML modules."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from trainsup.doctor import (
    Check,
    check_daemon,
    check_disk,
    check_linger,
    check_nvml,
    check_service,
    check_state_dir,
    daemon_pid,
    run_checks,
)
from trainsup.paths import StateDir

HOLD_LOCK = """
import fcntl, os, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.truncate(0)
f.write(sys.argv[2])
f.flush()
print("locked", flush=True)
sys.stdin.read()
"""


def hold_lock(path: Path, content: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), content],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    path = tmp_path / "daemon.lock"
    holder = hold_lock(path, "4242")
    yield path, holder
    holder.kill()
    holder.wait()


# state dir


def test_state_dir_good(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    assert check_state_dir(state.root).ok is True


def test_state_dir_missing_is_not_applicable(tmp_path: Path) -> None:
    check = check_state_dir(tmp_path / "nothing")
    assert check.ok is None and "does not exist yet" in check.detail


def test_state_dir_too_open(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    check = check_state_dir(root)
    assert check.ok is False
    assert "mode 0755" in check.detail and f"chmod 700 {root}" in check.detail


def test_state_dir_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    assert check_state_dir(tmp_path / "state").ok is False


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_state_dir_of_someone_else(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    check = check_state_dir(root)
    assert check.ok is False and "uid 65534" in check.detail


# daemon


def test_daemon_alive_while_a_process_holds_the_lock(lock_holder: tuple[Path, subprocess.Popen[str]]) -> None:
    path, holder = lock_holder
    assert daemon_pid(path) == 4242
    check = check_daemon(path)
    assert check.ok is True and "pid 4242" in check.detail
    holder.kill()
    holder.wait()
    assert check_daemon(path).ok is False


def test_daemon_alive_without_a_pid_written(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "daemon.lock", "")
    try:
        assert daemon_pid(tmp_path / "daemon.lock") == 0
        assert check_daemon(tmp_path / "daemon.lock").detail == "the daemon is running."
    finally:
        holder.kill()
        holder.wait()


def test_probe_leaves_a_free_lock_free(tmp_path: Path) -> None:
    path = tmp_path / "daemon.lock"
    path.write_text("17")
    assert check_daemon(path).ok is False
    with path.open() as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if the probe kept it


def test_daemon_without_lock_file(tmp_path: Path) -> None:
    assert check_daemon(tmp_path / "daemon.lock").ok is False
    assert not (tmp_path / "daemon.lock").exists()


# NVML


class FakeNVMLError(Exception):
    pass


class FakeLibraryNotFound(FakeNVMLError):
    pass


def fake_nvml(*, init_error: Exception | None = None, count: int = 2) -> ModuleType:
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error:
            raise init_error

    module = SimpleNamespace(
        NVMLError=FakeNVMLError,
        NVMLError_LibraryNotFound=FakeLibraryNotFound,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: count,
        nvmlSystemGetDriverVersion=lambda: b"550.54.15",
        nvmlShutdown=lambda: calls.append("shutdown"),
        calls=calls,
    )
    return module  # type: ignore[return-value]


def test_nvml_reachable() -> None:
    module = fake_nvml(count=2)
    check = check_nvml(lambda: module)
    assert check == Check("nvml", True, "NVML sees 2 GPUs (driver 550.54.15).")
    assert module.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_nvml_without_driver_is_not_applicable() -> None:
    check = check_nvml(lambda: fake_nvml(init_error=FakeLibraryNotFound("NVML Shared Library Not Found")))
    assert check.ok is None and "NVML library not found" in check.detail


def test_nvml_broken_driver() -> None:
    check = check_nvml(lambda: fake_nvml(init_error=FakeNVMLError("Driver/library version mismatch")))
    assert check == Check("nvml", False, "NVML does not start: Driver/library version mismatch.")


def test_nvml_real_module_answers_in_one_sentence() -> None:
    check = check_nvml()
    assert check.name == "nvml" and check.detail.endswith(".") and "\n" not in check.detail


# service and linger


def write_unit(directory: Path, name: str, exe: str, wants: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    unit = directory / name
    unit.write_text(f"[Service]\nType=notify\nExecStart={exe} daemon\n")
    if wants:
        link = directory / wants
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(unit)
    return unit


def test_no_service_installed(tmp_path: Path) -> None:
    check = check_service("alice", tmp_path / "user", tmp_path / "system")
    assert check.ok is False and "trainsup service install" in check.detail


def test_user_service_installed_but_not_enabled(tmp_path: Path) -> None:
    write_unit(tmp_path / "user", "trainsup.service", sys.executable)
    check = check_service("alice", tmp_path / "user", tmp_path / "system")
    assert check.ok is False and "systemctl --user enable --now trainsup.service" in check.detail


def test_user_service_enabled(tmp_path: Path) -> None:
    write_unit(tmp_path / "user", "trainsup.service", sys.executable, "default.target.wants/trainsup.service")
    check = check_service("alice", tmp_path / "user", tmp_path / "system")
    assert check.ok is True and check.detail.startswith("trainsup.service is installed and enabled")


def test_service_pointing_at_a_deleted_venv(tmp_path: Path) -> None:
    gone = str(tmp_path / "old-venv" / "bin" / "trainsup")
    write_unit(tmp_path / "user", "trainsup.service", gone, "default.target.wants/trainsup.service")
    check = check_service("alice", tmp_path / "user", tmp_path / "system")
    assert check.ok is False and gone in check.detail


def test_system_template_enabled_makes_linger_unneeded(tmp_path: Path) -> None:
    system = tmp_path / "system"
    write_unit(system, "trainsup@.service", sys.executable, "multi-user.target.wants/trainsup@alice.service")
    checks = {
        c.name: c
        for c in run_checks(
            StateDir(tmp_path / "state"),
            [],
            user="alice",
            user_units=tmp_path / "user",
            system_units=system,
            linger_dir=tmp_path / "linger",
            nvml=fake_nvml,
        )
    }
    assert checks["service"].ok is True and "trainsup@alice.service" in checks["service"].detail
    assert checks["linger"].ok is None


def test_linger(tmp_path: Path) -> None:
    assert check_linger("alice", tmp_path).ok is False
    assert "loginctl enable-linger alice" in check_linger("alice", tmp_path).detail
    (tmp_path / "alice").touch()
    assert check_linger("alice", tmp_path).ok is True


# disk


def test_disk_space(tmp_path: Path) -> None:
    assert check_disk(tmp_path, min_free_bytes=0, min_free_fraction=0).ok is True
    low = check_disk(tmp_path, min_free_bytes=2**60)
    assert low.ok is False and low.detail.startswith("only ") and str(tmp_path) in low.detail
    assert check_disk(tmp_path, min_free_bytes=0, min_free_fraction=1.01).ok is False


def test_disk_of_a_dir_not_created_yet(tmp_path: Path) -> None:
    check = check_disk(tmp_path / "ckpt" / "run-1", min_free_bytes=0, min_free_fraction=0)
    assert check.ok is True and check.name == f"disk:{tmp_path / 'ckpt' / 'run-1'}"


# all together


def test_run_checks_names_and_one_disk_check_per_path(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    ckpt = tmp_path / "ckpt"
    checks = run_checks(
        state,
        [ckpt, ckpt, state.root],
        user="alice",
        user_units=tmp_path / "user",
        system_units=tmp_path / "system",
        linger_dir=tmp_path / "linger",
        nvml=fake_nvml,
    )
    assert [c.name for c in checks] == [
        "state_dir",
        "daemon",
        "nvml",
        "service",
        "linger",
        "disk_full",
        "state_size",
        f"disk:{state.root}",
        f"disk:{ckpt}",
    ]
    assert all(c.detail.endswith(".") and "\n" not in c.detail for c in checks)
