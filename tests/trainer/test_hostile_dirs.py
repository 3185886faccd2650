"""Checkpoint dirs another local user can write, and careless ones (issue 12).

User A (the one running the tests, root here) trains; user B (`nobody`, a real second
uid) plants files the way an attacker would: from a process of its own (fork, drop to
B's uid, plain file operations), in a dir B made world-writable or in a sticky one.
Tests that need a second uid are skipped when the tests do not run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from trainsup.contracts import lock_owner
from trainsup.trainer import CheckpointSaveError, FileOps, Saving, Session, UnsafeCheckpointDirError, save_file
from trainsup.trainer.checkpoints import CheckpointDir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second user needs root")
PRECIOUS = b"A's notes, not a lock file\n"


def model_of(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def session(directory: Path, model: torch.nn.Module, **kwargs: Any) -> Session:
    kwargs.setdefault("environ", {})
    return Session(model, checkpoint_dir=directory, handle_signals=False,
                   saving=Saving(every_epoch=False, every_seconds=None, on_exit=False), **kwargs)


def write_checkpoint(directory: Path, value: float, step: int) -> Path:
    """A valid checkpoint of a model whose every weight is `value` (written by the caller's uid)."""
    with session(directory, model_of(value), allow_shared_dir=True) as run:
        run.step = step
        run.save(wait=True)
    return directory / f"step-{step:09d}"


def staged_by_a(base: Path, value: float, step: int) -> Path:
    """A checkpoint B can read and copy as its own (B crafts it with the same library)."""
    stage = Path(tempfile.mkdtemp(dir=base))
    made = write_checkpoint(stage, value, step)
    for folder, dirs, files in os.walk(stage):
        for name in [*dirs, *files, "."]:
            os.chmod(Path(folder) / name, 0o755)
    return made


def expect_refusal(capsys: Any, run_dir: Path, action: Callable[[], None]) -> str:
    """`action` ends the run with exit 1, one line on stderr and exit.json config_error; returns the sentence."""
    with pytest.raises(SystemExit) as exited:
        action()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    record = json.loads((run_dir / "exit.json").read_text())
    assert record["reason"] == "config_error"
    assert record["detail"] == lines[0][len("error: "):]
    return record["detail"]


def weight(model: torch.nn.Module) -> float:
    return float(model.weight.detach().flatten()[0])


# --- 1. a .lock that is not ours ------------------------------------------------------------------


@needs_root
def test_a_lock_symlink_planted_by_another_user_is_not_written_through(base: Path, bob: Any, tmp_path: Path,
                                                                       capsys: Any) -> None:
    """B makes a world-writable dir with `.lock -> A's file`; A opted into the shared dir
    (so only the lock stands in the way): A's file keeps its content, the run stops in one
    sentence, config_error."""
    notes = base / "notes.txt"
    notes.write_bytes(PRECIOUS)
    shared = base / "shared"

    def plant() -> None:
        shared.mkdir()
        shared.chmod(0o777)
        os.symlink(notes, shared / ".lock")

    bob.run(plant)
    environ = {"TRAINSUP_RUN_DIR": str(tmp_path), "TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR": "1"}
    detail = expect_refusal(capsys, tmp_path, lambda: session(shared, model_of(0.0), environ=environ).__enter__())
    assert detail == (f"The lock file {shared}/.lock is a symbolic link; "
                      "refusing to write this run's pid through it (remove it if you made it).")
    assert notes.read_bytes() == PRECIOUS
    assert os.path.islink(shared / ".lock")
    assert lock_owner(shared / ".lock") is None  # `trainsup` commands do not follow it either


@pytest.mark.parametrize("plant", ["dangling symlink", "fifo", "directory", "hard link"])
def test_a_lock_that_is_not_a_plain_file_of_its_own_is_refused(tmp_path: Path, plant: str, capsys: Any) -> None:
    """Careless or hostile: whatever sits at `.lock`, the run never creates, truncates or
    blocks on something else; it stops with one sentence naming the lock."""
    ckpt, run_dir, elsewhere = tmp_path / "ckpt", tmp_path / "run", tmp_path / "elsewhere.txt"
    ckpt.mkdir()
    lock = ckpt / ".lock"
    if plant == "dangling symlink":
        os.symlink(elsewhere, lock)
    elif plant == "fifo":
        os.mkfifo(lock)
    elif plant == "directory":
        lock.mkdir()
    else:
        elsewhere.write_bytes(PRECIOUS)
        os.link(elsewhere, lock)
    environ = {"TRAINSUP_RUN_DIR": str(run_dir)}
    detail = expect_refusal(capsys, run_dir, lambda: session(ckpt, model_of(0.0), environ=environ).__enter__())
    why = {"dangling symlink": "is a symbolic link", "fifo": "is not a regular file",
           "directory": "is not a regular file", "hard link": "has 2 hard links"}[plant]
    assert detail.startswith(f"The lock file {lock} {why}; refusing")
    if plant == "hard link":
        assert elsewhere.read_bytes() == PRECIOUS
    else:
        assert not elsewhere.exists()


def test_checkpoint_files_are_never_created_through_a_planted_name(tmp_path: Path, monkeypatch: Any) -> None:
    """Names the library creates cannot be planted in advance: a symlink at a temp name is
    refused (O_EXCL, O_NOFOLLOW), and LATEST's temp name is not the predictable `.LATEST.tmp-<pid>`."""
    target = tmp_path / "target.txt"
    target.write_bytes(PRECIOUS)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.symlink(target, ckpt / f".LATEST.tmp-{os.getpid()}")  # the old name: LATEST was never updated
    with session(ckpt, model_of(1.0)) as run:
        os.symlink(target, ckpt / f".LATEST.tmp-{os.getpid()}")  # prepare() cleared the first; plant again
        run.step = 3
        run.save(wait=True)
    assert (ckpt / "LATEST").read_text() == "step-000000003\n"
    with pytest.raises(FileExistsError):
        FileOps().write_file(ckpt / f".LATEST.tmp-{os.getpid()}", lambda file: file.write(b"x"))
    with pytest.raises(OSError):
        FileOps().fsync_file(ckpt / f".LATEST.tmp-{os.getpid()}")

    class Predictable:
        hex = "0123456789abcdef"

    monkeypatch.setattr("trainsup.trainer.atomic.uuid.uuid4", lambda: Predictable)
    path = tmp_path / "model.pth"

    temp = tmp_path / f".model.pth.tmp-{os.getpid()}-01234567"
    ops = FileOps()
    original = ops.write_file

    def plant_then_write(p: Path, write: Any) -> None:  # the link appears after stale temps were cleared
        os.symlink(target, temp)
        original(p, write)

    ops.write_file = plant_then_write  # type: ignore[method-assign]
    with pytest.raises(CheckpointSaveError, match="File exists"):
        save_file({"w": torch.ones(2)}, path, ops=ops)
    assert target.read_bytes() == PRECIOUS and not path.exists()


def test_sealing_a_framework_checkpoint_writes_through_no_planted_link(tmp_path: Path) -> None:
    """The HF/accelerate seal: a link planted at the manifest's temp name, at a file and
    inside a shard dir is neither written, fsynced through nor listed; the seal succeeds."""
    from trainsup.integrations.hf import seal_checkpoint
    from trainsup.manifest import verify

    target = tmp_path / "target.txt"
    target.write_bytes(PRECIOUS)
    checkpoint = tmp_path / "out" / "checkpoint-5"
    (checkpoint / "global_step5").mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "global_step5" / "shard.pt").write_bytes(b"shard")
    os.symlink(target, checkpoint / "global_step5" / "zero.pt")
    os.symlink(target, checkpoint / "extra.bin")
    os.symlink(target, checkpoint / f".manifest.json.tmp-{os.getpid()}")
    manifest = seal_checkpoint(checkpoint, 5)
    assert set(manifest.files) == {"model.safetensors"}
    assert verify(checkpoint).step == 5
    assert target.read_bytes() == PRECIOUS and not os.path.lexists(checkpoint / f".manifest.json.tmp-{os.getpid()}")


# --- 2. a checkpoint dir another user could have written ---------------------------------------------


@needs_root
def test_a_checkpoint_in_another_users_dir_is_not_loaded(base: Path, bob: Any, tmp_path: Path, capsys: Any) -> None:
    """B makes a world-writable dir holding a checkpoint of B's; A's job (under the daemon)
    is pointed at it: refused with the owner and mode, config_error, nothing loaded."""
    staged = staged_by_a(base, 7.0, step=50)
    shared = base / "shared"

    def plant() -> None:
        shared.mkdir()
        shared.chmod(0o777)
        shutil.copytree(staged, shared / staged.name)

    bob.run(plant)
    model = model_of(0.0)
    environ = {"TRAINSUP_RUN_DIR": str(tmp_path), "TRAINSUP_JOB_ID": "j1"}
    detail = expect_refusal(capsys, tmp_path, lambda: session(shared, model, environ=environ).__enter__())
    assert detail == (
        f"The checkpoint directory {shared} is owned by uid {bob.uid} ({bob.name}) and writable by others "
        "(mode 0777); refusing to load checkpoints another user could have written; pass allow_shared_dir=True "
        "to Session (or set TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR=1) if it is meant to be shared."
    )
    assert weight(model) == 0.0

    # the opt-in: a team dir on purpose; B's checkpoint is loaded
    with session(shared, model, environ={"TRAINSUP_ALLOW_SHARED_CHECKPOINT_DIR": "1"}) as run:
        assert run.step == 50 and weight(model) == 7.0


def test_a_dir_made_writable_by_everyone_is_refused(tmp_path: Path, capsys: Any) -> None:
    """Careless: `chmod 777` on one's own checkpoint dir (or a group-writable one on a shared group)."""
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 7.0, step=4)
    ckpt.chmod(0o777)
    model = model_of(0.0)
    detail = expect_refusal(capsys, tmp_path, lambda: session(
        ckpt, model, environ={"TRAINSUP_RUN_DIR": str(tmp_path)}).__enter__())
    assert detail.startswith(f"The checkpoint directory {ckpt} is writable by others (mode 0777); refusing to load")
    assert weight(model) == 0.0
    with session(ckpt, model, allow_shared_dir=True) as run:
        assert run.step == 4 and weight(model) == 7.0


@needs_root
def test_group_writable_is_fine_for_the_owners_own_group_only(tmp_path: Path, capsys: Any) -> None:
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 7.0, step=4)
    ckpt.chmod(0o775)  # root:root: root's own private group (umask 002 style)
    with session(ckpt, model_of(0.0)) as run:
        assert run.step == 4
    shared_group = next(g for g in ("users", "nogroup", "staff") if _gid(g) is not None)
    os.chown(ckpt, 0, _gid(shared_group))
    detail = expect_refusal(capsys, tmp_path, lambda: session(
        ckpt, model_of(0.0), environ={"TRAINSUP_RUN_DIR": str(tmp_path)}).__enter__())
    assert f"writable by group {_gid(shared_group)} ({shared_group}) (mode 0775)" in detail


@needs_root
def test_in_a_sticky_dir_a_checkpoint_planted_by_another_user_is_passed_over(base: Path, bob: Any,
                                                                            tmp_path: Path) -> None:
    """A's dir is sticky and world-writable (like /tmp): B cannot touch A's checkpoints but
    can add a newer one of his own; A resumes from its own and sets B's aside."""
    ckpt = base / "ckpt"
    write_checkpoint(ckpt, 1.0, step=3)
    ckpt.chmod(0o1777)
    staged = staged_by_a(base, 7.0, step=999)
    bob.run(lambda: shutil.copytree(staged, ckpt / staged.name))
    assert (ckpt / staged.name).stat().st_uid == bob.uid

    model = model_of(0.0)
    with session(ckpt, model, environ={"TRAINSUP_RUN_DIR": str(tmp_path)}) as run:
        assert run.step == 3 and weight(model) == 1.0
    record = json.loads((tmp_path / "resume.json").read_text())
    assert record["checkpoint"] == "step-000000003"
    assert record["skipped"] == [{"checkpoint": "step-000000999",
                                  "why": f"step-000000999 is owned by uid {bob.uid} ({bob.name}), not by this user"}]
    assert not (ckpt / "step-000000999").exists()  # set aside, kept for a look


def test_a_symlinked_state_file_is_never_loaded(tmp_path: Path) -> None:
    """Even in a shared dir (opted in), a checkpoint whose file is a symlink (to a file
    matching a forged manifest) is passed over: the library reads no file through a link."""
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, 1.0, step=3)
    forged = write_checkpoint(tmp_path / "forge", 7.0, step=9)
    planted = ckpt / forged.name
    planted.mkdir()
    shutil.copy(forged / "manifest.json", planted / "manifest.json")
    os.symlink(forged / "state.pt", planted / "state.pt")
    model = model_of(0.0)
    with session(ckpt, model, allow_shared_dir=True, environ={"TRAINSUP_RUN_DIR": str(tmp_path)}) as run:
        assert run.step == 3 and weight(model) == 1.0
    record = json.loads((tmp_path / "resume.json").read_text())
    assert record["skipped"] == [{"checkpoint": "step-000000009", "why": "state.pt is a symbolic link"}]


# --- 3. new directories are durable -----------------------------------------------------------------


def test_every_directory_the_session_creates_is_fsynced_in_its_parent(tmp_path: Path, monkeypatch: Any) -> None:
    """`runs/exp/ckpt` that does not exist yet: after start(), a power cut keeps all three
    levels, because each parent was fsynced after its new entry."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    ckpt = tmp_path / "runs" / "exp" / "ckpt"
    with session(ckpt, model_of(0.0)):
        pass
    for parent in (tmp_path, tmp_path / "runs", tmp_path / "runs" / "exp"):
        assert str(parent) in synced, f"{parent} was not fsynced after its new subdirectory"
    assert stat.S_IMODE(ckpt.stat().st_mode) & 0o022 == 0  # and the dirs it made pass its own check


# --- 4. a file system that does not say how big it is ------------------------------------------------


def _statvfs_with(monkeypatch: Any, blocks: int, available: int) -> None:
    real = os.statvfs

    def fake(path: Any) -> os.statvfs_result:
        r = real(path)
        return os.statvfs_result((r.f_bsize, r.f_frsize, blocks, available, available, r.f_files, r.f_ffree,
                                  r.f_favail, r.f_flag, r.f_namemax))

    monkeypatch.setattr(os, "statvfs", fake)


def test_a_file_system_reporting_zero_blocks_is_not_full(tmp_path: Path, monkeypatch: Any) -> None:
    """Some FUSE mounts report 0 total and 0 free blocks: unknown, so every save goes ahead."""
    _statvfs_with(monkeypatch, blocks=0, available=0)
    checkpoints = CheckpointDir(tmp_path)
    with session(tmp_path, model_of(1.0)) as run:
        for step in (1, 2, 3):
            run.step = step
            run.save(wait=True)
    assert [p.name for p in checkpoints.step_dirs()] == ["step-000000003", "step-000000002", "step-000000001"]


def test_a_known_full_file_system_still_refuses_the_save(tmp_path: Path, monkeypatch: Any) -> None:
    with session(tmp_path, model_of(1.0)) as run:
        run.step = 1
        run.save(wait=True)
        _statvfs_with(monkeypatch, blocks=1000, available=0)
        run.step = 2
        with pytest.raises(CheckpointSaveError, match=r"only 0 bytes free, the last checkpoint took \d+\); "
                                                      r"the previous checkpoint step-000000001 is intact"):
            run.save(wait=True)


def _gid(name: str) -> int | None:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def test_unsafe_checkpoint_dir_error_is_a_configuration_error() -> None:
    assert UnsafeCheckpointDirError.restartable is False
