"""The unit files in systemd/, rendered as `trainsup service install` would, pass
`systemd-analyze verify` without a warning."""

from __future__ import annotations

import configparser
import os
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
