"""`trainsup.trainer.save_file`: a power cut after any write, fsync or rename leaves the old or the new object."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from trainsup.trainer import CheckpointSaveError, save_file

NAME = "last_model.pth"


def state(version: int) -> dict[str, Any]:
    return {"w": torch.full((256,), float(version)), "epoch": version, "history": [0.5] * version}


def load(path: Path) -> int | None:
    """The version of the object at `path`, None when there is no file; raises on a torn one."""
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)["epoch"]


def crash_failures(helpers: Any, tmp: Path, old: int | None, skip: frozenset[str] = frozenset()) -> list[str]:
    """Crash after each operation of one save_file, in both power-loss models; every crash
    point whose surviving file is neither the old nor the new object, or loses the new one
    after save_file returned."""
    base = tmp / "base"
    base.mkdir()
    if old is not None:
        torch.save(state(old), base / NAME)  # the model treats what is there at the start as durable
    new = old + 1 if old is not None else 1

    counting = tmp / "count"
    shutil.copytree(base, counting)
    counter = helpers.PowerLossModel(counting, skip=skip)
    save_file(state(new), counting / NAME, ops=counter)
    total = len(counter.done)
    assert counter.done == ["write_file", "fsync_file", "rename", "fsync_dir"], counter.done

    failures = []
    for k in range(1, total + 1):
        for mode in ("strict", "metadata"):
            root = tmp / f"run-{k}-{mode}"
            shutil.copytree(base, root)
            model = helpers.PowerLossModel(root, crash_after=k, skip=skip)
            with pytest.raises(helpers.SimulatedCrash):
                save_file(state(new), root / NAME, ops=model)
            survived = tmp / f"after-{k}-{mode}"
            model.materialize(survived, mode)
            where = f"crash after {k} ({counter.done[k - 1]}, {mode})"
            try:
                got = load(survived / NAME)
            except Exception as exc:
                failures.append(f"{where}: torn file ({exc.__class__.__name__})")
                continue
            if got not in (old, new):
                failures.append(f"{where}: found {got}, not {old} or {new}")
            elif k == total and got != new:
                failures.append(f"power lost after save_file returned ({mode}): found {got}, the new {new} is lost")
            else:
                # the next save goes over whatever was left, temp files included
                save_file(state(new + 1), survived / NAME)
                assert load(survived / NAME) == new + 1
                assert [p.name for p in survived.iterdir()] == [NAME], "a stale temp file stayed"
    return failures


def test_every_crash_point_leaves_old_or_new(helpers: Any, tmp_path: Path) -> None:
    assert crash_failures(helpers, tmp_path, old=3) == []


def test_first_save_leaves_nothing_or_new(helpers: Any, tmp_path: Path) -> None:
    assert crash_failures(helpers, tmp_path, old=None) == []


@pytest.mark.parametrize("removed", ["fsync_file", "fsync_dir"])
def test_harness_catches_a_save_without_fsync(helpers: Any, tmp_path: Path, removed: str) -> None:
    failures = crash_failures(helpers, tmp_path, old=3, skip=frozenset({removed}))
    assert failures, f"the harness did not notice save_file without {removed}"


def test_plain_save_and_load(tmp_path: Path) -> None:
    path = save_file(state(1), tmp_path / NAME)
    assert path == tmp_path / NAME and load(path) == 1
    save_file(state(2), str(tmp_path / NAME))
    assert load(tmp_path / NAME) == 2
    assert [p.name for p in tmp_path.iterdir()] == [NAME]


def test_disk_full_keeps_the_old_file_and_removes_the_temp(helpers: Any, tmp_path: Path) -> None:
    save_file(state(1), tmp_path / NAME)
    with pytest.raises(CheckpointSaveError) as raised:
        save_file(state(2), tmp_path / NAME, ops=helpers.NoSpaceOps(budget=100))
    message = str(raised.value)
    assert "No space left on device" in message and "the previous file is intact" in message, message
    assert "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == [NAME]
    assert load(tmp_path / NAME) == 1


def test_an_object_torch_cannot_save_keeps_the_old_file(tmp_path: Path) -> None:
    save_file(state(1), tmp_path / NAME)
    with pytest.raises(CheckpointSaveError):
        save_file({"f": lambda: 0}, tmp_path / NAME)
    assert [p.name for p in tmp_path.iterdir()] == [NAME]
    assert load(tmp_path / NAME) == 1


def test_a_missing_directory_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(CheckpointSaveError) as raised:
        save_file(state(1), tmp_path / "nowhere" / NAME)
    assert "No such file or directory" in str(raised.value) and "there was no file before" in str(raised.value)


def test_a_stale_temp_file_is_removed_by_the_next_save(tmp_path: Path) -> None:
    (tmp_path / f".{NAME}.tmp-1234-abcd").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pth.tmp-1-ab").write_bytes(b"another file's, kept")
    save_file(state(1), tmp_path / NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pth.tmp-1-ab", NAME]
