"""Installing the systemd unit, with a recording fake systemctl and a tmp unit dir."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from trainsup.errors import ServiceError
from trainsup.service import current_user, find_executable, install, linger_enabled


class FakeSystemctl:
    def __init__(self, version: int = 252, fail: Sequence[str] = (), stderr: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.version = version
        self.fail = fail
        self.stderr = stderr

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(tuple(args))
        if tuple(args) == ("--version",):
            return subprocess.CompletedProcess(args, 0, f"systemd {self.version} (x)\n+PAM\n", "")
        failed = any(word in args for word in self.fail)
        return subprocess.CompletedProcess(args, 1 if failed else 0, "", self.stderr if failed else "")

    @property
    def changes(self) -> list[tuple[str, ...]]:
        return [call for call in self.calls if call != ("--version",)]


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUDO_USER", "TRAINSUP_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    path = tmp_path / "venv" / "bin" / "trainsup"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def linger(tmp_path: Path) -> Path:
    path = tmp_path / "linger"
    path.mkdir()
    return path


def test_user_install_writes_the_unit_and_enables_it(tmp_path: Path, exe: Path, linger: Path) -> None:
    systemctl = FakeSystemctl()
    result = install(
        "user", None, unit_dir=tmp_path / "units", systemctl=systemctl, executable=exe, linger_dir=linger
    )
    assert result.unit_name == "trainsup.service"
    assert result.unit_path == tmp_path / "units" / "trainsup.service"
    text = result.unit_path.read_text()
    assert text == result.content
    assert f"\nExecStart={exe} daemon\n" in text
    assert "@TRAINSUP@" not in text
    assert stat.S_IMODE(result.unit_path.stat().st_mode) == 0o644
    assert systemctl.changes == [("--user", "daemon-reload"), ("--user", "enable", "--now", "trainsup.service")]
    assert list(result.commands) == systemctl.changes
    assert not result.dry_run
    [warning] = result.warnings
    assert f"loginctl enable-linger {current_user()}" in warning


def test_no_linger_warning_when_lingering(tmp_path: Path, exe: Path, linger: Path) -> None:
    (linger / current_user()).touch()
    assert linger_enabled(current_user(), linger)
    result = install("user", None, unit_dir=tmp_path, systemctl=FakeSystemctl(), executable=exe, linger_dir=linger)
    assert result.warnings == ()


def test_system_install_enables_the_template_instance(tmp_path: Path, exe: Path, linger: Path) -> None:
    systemctl = FakeSystemctl()
    result = install("system", "root", unit_dir=tmp_path, systemctl=systemctl, executable=exe, linger_dir=linger)
    assert result.unit_path == tmp_path / "trainsup@.service"
    assert "\nUser=%i\n" in result.unit_path.read_text()
    assert systemctl.changes == [("daemon-reload",), ("enable", "--now", "trainsup@root.service")]
    [warning] = result.warnings
    assert warning.startswith("the daemon and every job will run as root without capabilities")


def test_system_install_defaults_to_the_sudo_caller(
    tmp_path: Path, exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "nobody")
    result = install("system", None, unit_dir=tmp_path, systemctl=FakeSystemctl(), executable=exe, dry_run=True)
    assert result.unit_name == "trainsup@nobody.service"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs directories owned by root, closed to nobody")
def test_system_install_warns_when_the_user_cannot_reach_the_command() -> None:
    with tempfile.TemporaryDirectory() as top:
        root = Path(top)
        root.chmod(0o755)
        exe = root / "private" / "bin" / "trainsup"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        quiet = install("system", "nobody", unit_dir=root, systemctl=FakeSystemctl(), executable=exe, dry_run=True)
        assert quiet.warnings == ()
        (root / "private").chmod(0o700)
        loud = install("system", "nobody", unit_dir=root, systemctl=FakeSystemctl(), executable=exe, dry_run=True)
        assert loud.warnings == (f"nobody may not be able to run {exe}, because {root / 'private'} is closed to them",)


def test_growing_restart_delays_on_new_systemd(tmp_path: Path, exe: Path, linger: Path) -> None:
    result = install(
        "user", None, unit_dir=tmp_path, systemctl=FakeSystemctl(version=255), executable=exe, linger_dir=linger
    )
    assert "\nRestartSteps=5\n" in result.content and "\nRestartMaxDelaySec=5min\n" in result.content


def test_dry_run_writes_and_changes_nothing(tmp_path: Path, exe: Path, linger: Path) -> None:
    systemctl = FakeSystemctl()
    result = install(
        "user", None, unit_dir=tmp_path / "units", systemctl=systemctl, executable=exe, dry_run=True, linger_dir=linger
    )
    assert result.dry_run
    assert not (tmp_path / "units").exists()
    assert systemctl.changes == []
    assert result.commands[-1] == ("--user", "enable", "--now", "trainsup.service")
    assert f"ExecStart={exe} daemon" in result.content


def test_state_home_of_this_shell_is_pinned_in_a_user_unit(
    tmp_path: Path, exe: Path, linger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINSUP_HOME", str(tmp_path / "state"))
    result = install("user", None, unit_dir=tmp_path, systemctl=FakeSystemctl(), executable=exe, linger_dir=linger)
    assert f'\nEnvironment="TRAINSUP_HOME={tmp_path / "state"}"\n' in result.content


def test_reinstall_over_a_different_unit_says_how_to_apply_it(tmp_path: Path, exe: Path, linger: Path) -> None:
    (linger / current_user()).touch()
    kwargs = dict(unit_dir=tmp_path, systemctl=FakeSystemctl(), linger_dir=linger)
    assert install("user", None, executable=exe, **kwargs).warnings == ()  # type: ignore[arg-type]
    assert install("user", None, executable=exe, **kwargs).warnings == ()  # type: ignore[arg-type]
    other = exe.with_name("other") / "trainsup"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    [warning] = install("user", None, executable=other, **kwargs).warnings  # type: ignore[arg-type]
    assert "systemctl --user restart trainsup.service" in warning
    assert str(other) in (tmp_path / "trainsup.service").read_text()


def test_failed_systemctl_is_one_sentence(tmp_path: Path, exe: Path) -> None:
    systemctl = FakeSystemctl(fail=("enable",), stderr="Failed to connect to bus: No medium found\n")
    with pytest.raises(ServiceError) as caught:
        install("user", None, unit_dir=tmp_path, systemctl=systemctl, executable=exe)
    message = str(caught.value)
    assert "Failed to connect to bus: No medium found" in message
    assert "\n" not in message
    assert (tmp_path / "trainsup.service").exists()


def test_missing_systemctl(tmp_path: Path, exe: Path) -> None:
    def absent(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("systemctl")

    with pytest.raises(ServiceError, match="systemctl is not installed"):
        install("user", None, unit_dir=tmp_path, systemctl=absent, executable=exe)


@pytest.mark.parametrize(
    ("scope", "user", "match"),
    [
        ("user", "somebody-else", "a user unit runs as yourself"),
        ("system", "no-such-user-xyz", "there is no user named no-such-user-xyz"),
        ("system", "bad name", "is not a user name"),
        ("cluster", None, "unknown service scope"),
    ],
)
def test_bad_requests(tmp_path: Path, exe: Path, scope: str, user: str | None, match: str) -> None:
    with pytest.raises(ServiceError, match=match):
        install(scope, user, unit_dir=tmp_path, systemctl=FakeSystemctl(), executable=exe)  # type: ignore[arg-type]


def test_unwritable_unit_dir(tmp_path: Path, exe: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ServiceError, match="cannot write"):
        install("user", None, unit_dir=blocker, systemctl=FakeSystemctl(), executable=exe)


def test_find_executable_prefers_the_one_beside_the_interpreter(tmp_path: Path, exe: Path) -> None:
    python = exe.with_name("python")
    assert find_executable(python=str(python), argv0="", which=lambda _: None) == exe


def test_find_executable_falls_back_to_argv0_then_path(
    tmp_path: Path, exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = str(tmp_path / "nowhere" / "python")
    monkeypatch.chdir(exe.parent.parent)
    assert find_executable(python=nowhere, argv0="bin/trainsup", which=lambda _: None) == exe
    assert find_executable(python=nowhere, argv0="pytest", which=lambda _: str(exe)) == exe
    with pytest.raises(ServiceError, match="cannot find the `trainsup` command"):
        find_executable(python=nowhere, argv0="pytest", which=lambda _: None)


def test_find_executable_in_this_checkout() -> None:
    found = find_executable()
    assert found.is_absolute() and found.name == "trainsup" and os.access(found, os.X_OK)


def test_installation_without_unit_templates(tmp_path: Path, exe: Path) -> None:
    with pytest.raises(ServiceError, match="has no unit template"):
        install("user", None, unit_dir=tmp_path, systemctl=FakeSystemctl(), executable=exe, units_source=tmp_path)
