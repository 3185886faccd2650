"""Nothing in the state dir is readable by another user on its own: files 0600, dirs 0700.

The state dir's own 0700 is not enough: it is lost to one `chmod`, a `cp -a` or a tar
archive of it, and the database and logs hold the submitting shell's environment.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import JOBS, Cli, DaemonProcess, write_spec
from trainsup.paths import StateDir


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most shells have: without explicit modes, files come out 0644 and dirs 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def open_to_others(root: Path, skip: frozenset[Path] = frozenset()) -> list[str]:
    """Every file and directory under `root` with a group or other bit; a dir in `skip` is checked, not entered."""
    found = []

    def check(path: Path) -> None:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o077 and not path.is_symlink():
            found.append(f"{path.relative_to(root)} {mode:04o}")

    for top, dirs, files in os.walk(root):
        check(Path(top))
        for name in files:
            check(Path(top, name))
        for name in dirs:
            if Path(top, name) in skip:
                check(Path(top, name))
        dirs[:] = [name for name in dirs if Path(top, name) not in skip]
    return found


def test_a_job_run_leaves_nothing_open_to_others(usual_umask: None, cli: Cli, daemon: DaemonProcess,
                                                  tmp_path: Path) -> None:
    daemon.start()
    spec = write_spec(tmp_path / "count.yaml", name="count",
                      command=[sys.executable, str(JOBS / "counter.py"), "--steps", "2", "--interval", "0.01"])
    job = cli.submit(spec)
    assert cli.wait_state(job, "succeeded", "failed")["state"] == "succeeded"
    root = Path(cli.env["TRAINSUP_HOME"])
    state = StateDir(root)
    checkpoints = state.default_checkpoint_dir(job)
    names = {p.name for p in root.rglob("*")}
    assert {"trainsup.db", "trainsup.db-wal", "trainsup.db-shm", "attempt-1.log", "launch.json", "monitor.log",
            "ended.json", "checkpoints"} <= names, names
    # The job's own checkpoints keep the modes the job gave them; their dir is private.
    assert open_to_others(root, skip=frozenset({checkpoints})) == []


def test_daemon_start_makes_an_old_state_dir_private(usual_umask: None, state_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    state = StateDir(Path(state_env["TRAINSUP_HOME"]))
    # What an older trainsup left behind: 0755 dirs, 0644 files.
    run_dir = state.run_dir("old1", 1)
    checkpoints = state.default_checkpoint_dir("old1")
    for directory in (state.inbox, state.rejected, run_dir / "heartbeat", checkpoints / "step-000000001"):
        directory.mkdir(parents=True)
    for path in (state.rejected / "bad.json", state.attempt_log("old1", 1), run_dir / "launch.json",
                 run_dir / "heartbeat" / "rank-0.json", checkpoints / "step-000000001" / "model.pt"):
        path.write_text("{}")
    os.chmod(state.root, 0o755)
    own_checkpoint = checkpoints / "step-000000001" / "model.pt"

    handle = DaemonProcess(state_env, tmp_path / "daemon.log").start()
    handle.stop()

    assert open_to_others(state.root, skip=frozenset({checkpoints})) == []
    assert stat.S_IMODE(own_checkpoint.stat().st_mode) == 0o644, "a job's own files are left alone"
