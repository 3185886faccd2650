"""Shared fixtures: a state dir, the installed `trainsup` command, a real daemon."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import Cli, DaemonProcess, kill_leftover_monitors


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TRAINSUP_HOME"] = str(tmp_path / "state")
    env.pop("NOTIFY_SOCKET", None)
    # Warm standbys off unless a job asks (tests/test_standby.py does): each one imports torch
    # again beside the job, and the suite runs many torch jobs at once on 2 cores.
    config = tmp_path / "trainsup-config.yaml"
    config.write_text("standby: false\n")
    env["TRAINSUP_CONFIG"] = str(config)
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


# --- a second user, for tests written as the attacker (tests/trainer/test_hostile_dirs.py, adapters) ---


@pytest.fixture
def base() -> Iterator[Path]:
    """A scratch dir every user can reach, like /tmp (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="trainsup-hostile-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bob() -> SimpleNamespace:
    """User B: a second real uid; `bob.run(action)` runs `action` in a process of B's."""
    entry = pwd.getpwnam("nobody")

    def run(action: Callable[[], None]) -> None:
        pid = os.fork()
        if pid == 0:  # only file operations here: no torch in a forked child
            code = 1
            try:
                os.setgroups([])
                os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
                os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
                action()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "B's action failed"

    return SimpleNamespace(uid=entry.pw_uid, name=entry.pw_name, run=run)
