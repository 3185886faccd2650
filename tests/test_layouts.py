"""What the supervisor reads from a checkpoint dir it does not own: progress, names, quarantine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.step_checkpoint import commit as commit_trainer_checkpoint
from trainsup.layouts import HF, LIGHTNING, RESUME, TRAINER, find_checkpoints, newest_write, quarantine
from trainsup.manifest import InvalidCheckpointError, verify


def touch(path: Path, at: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (at, at))
    return path


def test_every_known_layout_newest_first(tmp_path: Path) -> None:
    touch(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=0-step=50.ckpt", 100)
    touch(tmp_path / "last.ckpt", 400)
    touch(tmp_path / "checkpoint-200" / "model.safetensors", 300)
    touch(tmp_path / "checkpoint-200" / "trainer_state.json", 310)
    commit_trainer_checkpoint(tmp_path, 7)
    os.utime(tmp_path / "step-000000007" / "state", (200, 200))
    os.utime(tmp_path / "step-000000007" / "manifest.json", (200, 200))
    found = [(c.name, c.layout, c.written_at) for c in find_checkpoints(tmp_path)]
    assert found == [
        ("last.ckpt", LIGHTNING, 400),
        ("checkpoint-200", HF, 310),
        ("step-000000007", TRAINER, 200),
        ("lightning_logs/version_0/checkpoints/epoch=0-step=50.ckpt", LIGHTNING, 100),
    ]


def test_a_trainer_dir_whose_files_disagree_with_its_manifest_is_not_a_checkpoint(tmp_path: Path) -> None:
    commit_trainer_checkpoint(tmp_path, 7)
    (tmp_path / "step-000000007" / "state").write_bytes(b"")
    assert find_checkpoints(tmp_path) == []


def test_a_resume_pattern_names_exactly_what_the_script_loads(tmp_path: Path) -> None:
    touch(tmp_path / "last_model.pth", 100)
    touch(tmp_path / "best_model.pth", 200)
    touch(tmp_path / "last.ckpt", 300)
    assert [(c.name, c.layout) for c in find_checkpoints(tmp_path, "last_model.pth")] == [("last_model.pth", RESUME)]
    assert [c.name for c in find_checkpoints(tmp_path, "*.pth")] == ["best_model.pth", "last_model.pth"]


def test_progress_ignores_the_lock_temp_files_and_quarantine(tmp_path: Path) -> None:
    touch(tmp_path / "last.ckpt", 100)
    touch(tmp_path / ".lock", 900)
    touch(tmp_path / ".tmp-step-000000009-x" / "state", 900)
    touch(tmp_path / "last.ckpt.tmp_end.ckpt", 900)
    touch(tmp_path / "quarantine" / "old.ckpt", 900)
    assert newest_write(tmp_path) == 100
    touch(tmp_path / "checkpoint-5" / "optimizer.pt", 150)
    assert newest_write(tmp_path) == 150
    assert newest_write(tmp_path / "missing") is None


def test_quarantine_moves_never_deletes_and_keeps_both_of_a_name(tmp_path: Path) -> None:
    touch(tmp_path / "last.ckpt", 100, b"first")
    moved = quarantine(tmp_path, "last.ckpt")
    assert moved == tmp_path / "quarantine" / "last.ckpt" and moved.read_bytes() == b"first"
    touch(tmp_path / "last.ckpt", 200, b"second")
    again = quarantine(tmp_path, "last.ckpt")
    assert again != moved and again.read_bytes() == b"second" and moved.read_bytes() == b"first"
    touch(tmp_path / "checkpoint-300" / "model.safetensors", 300)
    assert quarantine(tmp_path, "checkpoint-300") == tmp_path / "quarantine" / "checkpoint-300"
    assert quarantine(tmp_path, "gone.ckpt") is None
    assert find_checkpoints(tmp_path) == []


def test_a_describe_names_what_the_next_attempt_finds(tmp_path: Path) -> None:
    touch(tmp_path / "last.ckpt", 1000)
    touch(tmp_path / "checkpoint-1200" / "model.safetensors", 1000)
    commit_trainer_checkpoint(tmp_path, 1200)
    texts = sorted(c.describe(now=1040) for c in find_checkpoints(tmp_path))
    assert texts == ["checkpoint-1200/, written 40 s ago", "last.ckpt, written 40 s ago", "step-000001200 (verified)"]


# --- files planted by someone else who can write the checkpoint dir ---------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("plant", ["symlink to /dev/zero", "fifo", "huge"])
def test_a_planted_manifest_neither_hangs_nor_exhausts_the_reader(tmp_path: Path, plant: str) -> None:
    commit_trainer_checkpoint(tmp_path, 7)
    planted = tmp_path / "step-000000009"
    planted.mkdir()
    manifest = planted / "manifest.json"
    if plant == "fifo":
        os.mkfifo(manifest)  # an open() without O_NONBLOCK waits for a writer forever
    elif plant == "huge":
        with open(manifest, "wb") as file:
            file.truncate(64 << 20)  # sparse: no disk used
    else:
        manifest.symlink_to("/dev/zero")
    assert [c.name for c in find_checkpoints(tmp_path)] == ["step-000000007"]
    with pytest.raises(InvalidCheckpointError, match="manifest.json"):
        verify(planted)


def test_a_state_file_that_is_a_symlink_is_not_a_checkpoint_even_with_a_forged_manifest(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s" * 10)
    commit_trainer_checkpoint(tmp_path, 7)
    state = tmp_path / "step-000000007" / "state"
    size = state.stat().st_size
    state.unlink()
    (tmp_path / "elsewhere").write_bytes(b"x" * size)
    state.symlink_to(tmp_path / "elsewhere")
    assert find_checkpoints(tmp_path) == []
    with pytest.raises(InvalidCheckpointError, match="not a regular file"):
        verify(tmp_path / "step-000000007")


def test_quarantine_never_moves_a_checkpoint_through_a_planted_symlink(tmp_path: Path) -> None:
    commit_trainer_checkpoint(tmp_path, 7)
    away = tmp_path.parent / f"{tmp_path.name}-away"
    away.mkdir()
    (tmp_path / "quarantine").symlink_to(away)
    with pytest.raises(OSError, match="not a directory of its own"):
        quarantine(tmp_path, "step-000000007")
    assert (tmp_path / "step-000000007").is_dir() and list(away.iterdir()) == []
