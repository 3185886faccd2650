"""The CLI's own surface: usage errors in one line, service install, doctor, help."""

from __future__ import annotations

import json

import pytest

from support import Cli


@pytest.mark.parametrize("args, fragment", [
    (["logs"], "Missing argument 'JOB'"),
    (["bogus"], "No such command 'bogus'"),
    (["status", "--bad"], "No such option '--bad'"),
    (["logs", "x", "--tail", "0"], "--tail"),
    (["service", "install", "--sideways"], "No such option"),
])
def test_usage_errors_are_one_line(cli: Cli, args: list[str], fragment: str):
    result = cli.run(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainsup: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_no_arguments_prints_help(cli: Cli):
    result = cli.run(check=False)
    assert result.returncode == 0 and "submit" in result.stdout and "status" in result.stdout


def test_service_install_dry_run_renders_this_installation(cli: Cli):
    result = cli.json("service", "install", "--dry-run")
    assert result["dry_run"] is True and result["unit"] == "trainsup.service"
    assert ["--user", "daemon-reload"] in result["commands"]
    text = cli.run("service", "install", "--dry-run").stdout
    assert "Type=notify" in text and "trainsup daemon" in text and "@TRAINSUP@" not in text


def test_doctor_reports_every_check(cli: Cli):
    result = cli.run("doctor", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert {"state_dir", "daemon", "nvml", "service", "linger"} <= set(checks)
    assert checks["daemon"]["ok"] is False, "no daemon runs for this fresh state dir"
    assert result.returncode == 1, "a failing check makes doctor exit non-zero"
