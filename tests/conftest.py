"""Shared fixtures: a state dir, the installed `trainsup` command, a real daemon."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Cli, DaemonProcess, kill_leftover_monitors


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TRAINSUP_HOME"] = str(tmp_path / "state")
    env.pop("NOTIFY_SOCKET", None)
    return env


@pytest.fixture
def cli(state_env: dict[str, str]) -> Cli:
    return Cli(state_env)


@pytest.fixture
def daemon(state_env: dict[str, str], tmp_path: Path) -> Iterator[DaemonProcess]:
    handle = DaemonProcess(state_env, tmp_path / "daemon.log")
    yield handle
    handle.stop()
    kill_leftover_monitors(Path(state_env["TRAINSUP_HOME"]))
