"""New directories outlive a power cut: each one's parent is fsynced after the mkdir.

By POSIX rules a file in a new directory is durable only once the directory's own
entry is on disk, i.e. after an fsync of its parent. The tests watch the real fsync
calls and name the directories they were made on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import World
from support import write_spec
from trainsup.commands import submit as submit_command
from trainsup.durable import make_dirs
from trainsup.paths import StateDir


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths every os.fsync in this test was made on, in order."""
    paths: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def test_the_first_submit_into_a_new_state_dir_is_durable(tmp_path: Path, synced: list[Path]) -> None:
    state = StateDir(tmp_path / "home" / "state")  # neither exists yet
    spec = write_spec(tmp_path / "job.yaml", name="first", command="true")
    submission = submit_command.submit(spec, None, False, state)
    request = next(state.inbox.glob("*.json"))
    assert submission.job_id in request.read_text()
    # Each new level is in its parent, the request in the inbox.
    for parent in (tmp_path, tmp_path / "home", state.root, state.inbox):
        assert parent in synced, f"{parent} was never fsynced: {synced}"
    assert synced.index(state.root) < synced.index(state.inbox), "the inbox is made durable before it is used"


def test_an_attempts_run_dir_is_durable_in_its_parent(tmp_path: Path, synced: list[Path]) -> None:
    world = World.make(tmp_path)
    job = world.submit("run")
    synced.clear()
    plan = world.start(job)
    job_dir = world.state.job_dir(job)
    assert plan.run_dir.parent == job_dir
    for parent in (world.state.root / "jobs", job_dir, plan.run_dir):
        assert parent in synced, f"{parent} was never fsynced: {synced}"


def test_make_dirs_creates_each_level_private_and_refuses_a_file(tmp_path: Path, synced: list[Path]) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert make_dirs(target) == [tmp_path / "a", tmp_path / "a" / "b", target]
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    assert all((p.stat().st_mode & 0o777) == 0o700 for p in (tmp_path / "a", target))
    assert make_dirs(target) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "file")
