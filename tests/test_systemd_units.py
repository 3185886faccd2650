"""The unit files in systemd/, rendered as `trainsup service install` would, pass
`systemd-analyze verify` without a warning."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trainsup.service import UNITS_SOURCE, find_executable, render_unit, template_file

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def render(scope: str, exe: Path, **kwargs: object) -> str:
    return render_unit((UNITS_SOURCE / template_file(scope)).read_text(), exe, **kwargs)  # type: ignore[arg-type]


def service_section(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {**dict(parser["Unit"]), **dict(parser["Service"]), **dict(parser["Install"])}


def verify(tmp_path: Path, scope: str, text: str) -> subprocess.CompletedProcess[str]:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    (unit_dir / template_file(scope)).write_text(text)
    env = dict(os.environ)
    if scope == "user":
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env.setdefault("XDG_RUNTIME_DIR", str(runtime))
        args = ["--user", "verify", str(unit_dir / "trainsup.service")]
    else:
        args = ["verify", str(unit_dir / "trainsup@root.service")]
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if "trainsup" in line]
    assert noise == [], result.stderr


@needs_analyze
@pytest.mark.parametrize("scope", ["user", "system"])
def test_rendered_units_verify_cleanly(tmp_path: Path, scope: str) -> None:
    assert_clean(verify(tmp_path, scope, render(scope, find_executable())))


@needs_analyze
def test_odd_executable_paths_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "my venv 100%" / "bin$x" / "trainsup"
    odd.parent.mkdir(parents=True)
    odd.write_text("#!/bin/sh\n")
    odd.chmod(0o755)
    text = render("system", odd, environment={"TRAINSUP_HOME": str(tmp_path / "state 50%")})
    assert_clean(verify(tmp_path, "system", text))
    assert f'Environment="TRAINSUP_HOME={tmp_path}/state 50%%"' in text


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    text = render("user", find_executable()).replace("KillMode=process", "KillMode=bogus")
    result = verify(tmp_path, "user", text)
    assert "trainsup.service" in result.stderr and "bogus" in result.stderr


@pytest.mark.parametrize("scope", ["user", "system"])
def test_only_exec_start_is_filled_in(scope: str) -> None:
    exe = find_executable()
    text = render(scope, exe)
    assert [line for line in text.splitlines() if str(exe) in line] == [f"ExecStart={exe} daemon"]
    assert "@TRAINSUP@" not in text


@pytest.mark.parametrize("scope", ["user", "system"])
def test_settings_that_the_daemon_relies_on(scope: str) -> None:
    exe = find_executable()
    settings = service_section(render(scope, exe))
    assert settings["ExecStart"] == f"{exe} daemon"
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"  # a daemon crash must not kill the jobs
    assert settings["Restart"] == "on-failure"
    assert settings["OOMPolicy"] == "continue"
    assert settings["WatchdogSec"] == "60s"
    assert settings["TimeoutStopSec"] == "10min"
    assert {"StartLimitIntervalSec", "StartLimitBurst", "RestartSec"} <= settings.keys()
    assert "RestartSteps" not in settings
    if scope == "system":
        assert settings["User"] == "%i"
        assert settings["WantedBy"] == "multi-user.target"
    else:
        assert "User" not in settings
        assert settings["WantedBy"] == "default.target"


@pytest.mark.parametrize(("version", "expected"), [(252, False), (253, False), (254, True), (None, False)])
def test_growing_restart_delays_only_where_systemd_knows_them(version: int | None, expected: bool) -> None:
    settings = service_section(render("user", find_executable(), systemd_version=version))
    assert ("RestartSteps" in settings) is expected
    assert ("RestartMaxDelaySec" in settings) is expected


def test_repo_units_carry_the_placeholder() -> None:
    for scope in ("user", "system"):
        assert "ExecStart=@TRAINSUP@ daemon\n" in (UNITS_SOURCE / template_file(scope)).read_text()


# --- sandboxing (issue 12) ----------------------------------------------------------------

# What a training job cannot live without: the GPUs and other devices, the network, the
# user's home and data, ptrace (py-spy, gdb), namespaces (containers), W+X memory (JITs),
# its own cgroups, /tmp shared with the user's shell, SysV/POSIX shm surviving a restart.
JOB_BREAKERS = (
    "PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "ProtectHome", "PrivateTmp",
    "ProtectControlGroups", "MemoryDenyWriteExecute", "RestrictNamespaces", "PrivateNetwork",
    "IPAddressDeny", "RestrictAddressFamilies", "RemoveIPC", "ProtectProc", "ProcSubset", "PrivateUsers",
)
# Fail a user manager's unit (218/CAPABILITIES) where unprivileged user namespaces are
# unavailable, or are ignored / switch on a user namespace there (docs/service.md).
NEEDS_PRIVILEGE = (
    "CapabilityBoundingSet", "AmbientCapabilities", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectKernelTunables", "ProtectSystem", "PrivateMounts", "ProtectHostname", "ReadOnlyPaths",
    "InaccessiblePaths", "User", "Group", "SupplementaryGroups",
)
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d)")


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def exposure(tmp_path: Path, scope: str, text: str) -> float:
    """`systemd-analyze security --offline=true` of the rendered unit; the system template
    as the instance `trainsup service install --system` enables for a normal user."""
    unit_dir = tmp_path / f"security-{scope}"
    unit_dir.mkdir()
    name = "trainsup.service" if scope == "user" else "trainsup@alice.service"
    (unit_dir / name).write_text(text)
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "security", "--offline=true", name], cwd=unit_dir, capture_output=True,
                            text=True, timeout=60, check=False)
    match = EXPOSURE.search(result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(2))


@needs_analyze
def test_security_exposure_of_both_units(tmp_path: Path) -> None:
    exe = find_executable()
    user = exposure(tmp_path, "user", render("user", exe))
    system = exposure(tmp_path, "system", render("system", exe))
    print(f"\nsystemd-analyze security --offline=true: trainsup.service {user} (was 9.6), "
          f"trainsup@alice.service {system} (was 9.2)")
    assert system <= 5.0
    # A user manager cannot restrict capabilities or mount namespaces without a user
    # namespace (docs/service.md), and the analyzer counts those as if it ran as root.
    assert user <= 8.0


@pytest.mark.parametrize("scope", ["user", "system"])
def test_sandbox_keeps_what_jobs_need(scope: str) -> None:
    found = directives(render(scope, find_executable()))
    assert found["NoNewPrivileges"] == ["yes"] and found["UMask"] == ["0077"]
    assert found["SystemCallErrorNumber"] == ["EPERM"], "a filtered call fails with EPERM, it does not kill the job"
    assert not set(JOB_BREAKERS) & found.keys()
    assert found.get("ProtectSystem", ["full"]) == ["full"], "jobs write wherever the user can, /etc and /usr aside"
    for group in ("@debug", "@mount", "@privileged", "@resources"):  # py-spy, containers, chown, affinity
        assert group not in found["SystemCallFilter"][0]
    # NoNewPrivileges= blocks the setuid nvidia-modprobe that creates /dev/nvidia* and
    # loads nvidia_uvm on first use: done before the daemon starts, outside the sandbox.
    assert "-+timeout 30 nvidia-modprobe -u -c=0" in found["ExecStartPre"]


def test_user_unit_needs_no_privilege() -> None:
    found = directives(render("user", find_executable()))
    assert not set(NEEDS_PRIVILEGE) & found.keys()
