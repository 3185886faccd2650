"""The save protocol under a crash after every file-system step, with power loss."""

from __future__ import annotations

import io
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from trainsup.trainer.checkpoints import CheckpointDir, Retention

TORCH = torch.__version__


def payload(step: int, variant: int = 0) -> torch.Tensor:
    return torch.full((64,), float(step * 10 + variant))


def meta(step: int) -> dict[str, Any]:
    return {"epoch": 0, "position": step, "torch_version": TORCH, "created": time.time()}


def files_for(step: int, variant: int = 0) -> dict[str, Any]:
    tensor = payload(step, variant)
    return {
        "state.pt": lambda f: torch.save({"w": tensor}, f),
        "extra.bin": lambda f: f.write(bytes([step % 256]) * 100),
    }


def read_back(root: Path) -> tuple[int, float] | None:
    """What a starting run would resume from: (step, first value of w), or None."""
    checkpoints = CheckpointDir(root)
    checkpoints.prepare()
    for checkpoint in checkpoints.verified():
        state = torch.load(checkpoint.path / "state.pt", weights_only=True)
        return checkpoint.step, float(state["w"][0])
    return None


def seed_dir(root: Path, steps: list[int]) -> None:
    checkpoints = CheckpointDir(root, retention=Retention(keep_last=None))
    checkpoints.prepare()
    for step in steps:
        checkpoints.save(step, files_for(step), meta(step))


def crash_failures(helpers: Any, tmp: Path, initial: list[int], new_step: int, new_variant: int,
                   skip: frozenset[str] = frozenset()) -> list[str]:
    """Crash after each operation of one save, in both power-loss models; return
    every crash point where the surviving directory resumes neither the old nor
    the new checkpoint, or loses the new one after `save` returned."""
    base = tmp / "base"
    seed_dir(base, initial)
    old = read_back(base)
    new = (new_step, float(payload(new_step, new_variant)[0]))

    counting_root = tmp / "count"
    shutil.copytree(base, counting_root)
    counter = helpers.PowerLossModel(counting_root, skip=skip)
    CheckpointDir(counting_root, counter, Retention(keep_last=2)).save(new_step, files_for(new_step, new_variant), meta(new_step))
    total = len(counter.done)
    assert total >= 10, counter.done

    failures = []
    for k in range(1, total + 1):
        for mode in ("strict", "metadata"):
            root = tmp / f"run-{k}-{mode}"
            shutil.copytree(base, root)
            model = helpers.PowerLossModel(root, crash_after=k, skip=skip)
            checkpoints = CheckpointDir(root, model, Retention(keep_last=2))
            with pytest.raises(helpers.SimulatedCrash):
                checkpoints.save(new_step, files_for(new_step, new_variant), meta(new_step))
            survived = tmp / f"after-{k}-{mode}"
            model.materialize(survived, mode)
            try:
                got = read_back(survived)
            except Exception as exc:  # the loader must never fail
                failures.append(f"crash after {k} ({counter.done[k - 1]}, {mode}): loader raised {exc!r}")
                continue
            if got not in (old, new):
                failures.append(f"crash after {k} ({counter.done[k - 1]}, {mode}): resumed {got}, not {old} or {new}")
            elif k == total and got != new:
                failures.append(f"power lost after save returned ({mode}): resumed {got}, the new {new} is lost")
            else:
                # the next run can always save again over whatever was left
                CheckpointDir(survived).save(new_step + 1, files_for(new_step + 1), meta(new_step + 1))
                assert read_back(survived) == (new_step + 1, float(payload(new_step + 1)[0]))
    return failures


def test_every_crash_point_leaves_old_or_new(helpers: Any, tmp_path: Path) -> None:
    assert crash_failures(helpers, tmp_path, initial=[100, 200], new_step=300, new_variant=0) == []


def test_crash_while_replacing_a_same_step_checkpoint(helpers: Any, tmp_path: Path) -> None:
    assert crash_failures(helpers, tmp_path, initial=[100, 200], new_step=200, new_variant=5) == []


@pytest.mark.parametrize("removed", ["fsync_file", "fsync_dir"])
def test_harness_catches_a_protocol_without_fsync(helpers: Any, tmp_path: Path, removed: str) -> None:
    failures = crash_failures(helpers, tmp_path, initial=[100, 200], new_step=300, new_variant=0,
                              skip=frozenset({removed}))
    assert failures, f"the harness did not notice the save without {removed}"


def test_disk_full_fails_the_save_and_keeps_the_previous(helpers: Any, tmp_path: Path) -> None:
    seed_dir(tmp_path, [100])
    checkpoints = CheckpointDir(tmp_path, helpers.NoSpaceOps(budget=1000))
    with pytest.raises(Exception) as raised:
        checkpoints.save(200, files_for(200), meta(200))
    message = str(raised.value)
    assert type(raised.value).__name__ == "CheckpointSaveError"
    assert "No space left on device" in message and "step-000000100 is intact" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-000000100"]
    assert read_back(tmp_path) == (100, float(payload(100)[0]))


def test_disk_full_on_a_real_tiny_tmpfs(tmp_path: Path) -> None:
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")
    try:
        checkpoints = CheckpointDir(mount / "ckpt", retention=Retention(keep_last=None))
        checkpoints.prepare()
        checkpoints.save(1, {"state.pt": lambda f: torch.save({"w": torch.zeros(1000)}, f)}, meta(1))
        big = torch.zeros(200_000)  # 800 kB: cannot fit
        with pytest.raises(Exception) as raised:
            checkpoints.save(2, {"state.pt": lambda f: torch.save({"w": big}, f)}, meta(2))
        assert "step-000000001 is intact" in str(raised.value), raised.value
        assert [p.name for p in checkpoints.step_dirs()] == ["step-000000001"]
        assert not [p for p in (mount / "ckpt").iterdir() if p.name.startswith(".tmp")]
        assert next(checkpoints.verified()).step == 1
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no-manifest", "bad-manifest"])
def test_corrupt_newest_falls_back_with_a_clear_line(tmp_path: Path, trainer_log: Any, damage: str) -> None:
    seed_dir(tmp_path, [100, 200])
    newest = tmp_path / "step-000000200"
    state = newest / "state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:-50])
    elif damage == "bitflip":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0x01
        state.write_bytes(bytes(data))
    elif damage == "no-manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text("{not json")
    assert read_back(tmp_path) == (100, float(payload(100)[0]))
    lines = [r.getMessage() for r in trainer_log.records if "not usable" in r.getMessage()]
    assert len(lines) == 1 and "step-000000200" in lines[0] and "\n" not in lines[0], lines
    expected = {"truncate": "has", "bitflip": "does not match its blake3", "no-manifest": "missing", "bad-manifest": "does not parse"}
    assert expected[damage] in lines[0]


def test_retention_keeps_last_and_best(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path, retention=Retention(keep_last=2, keep_best=1, metric="val", mode="max"))
    checkpoints.prepare()
    for step, val in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.1)]:
        checkpoints.save(step, files_for(step), {**meta(step), "metrics": {"val": val}})
    assert [p.name for p in checkpoints.step_dirs()] == ["step-000000005", "step-000000004", "step-000000002"]
    assert (tmp_path / "LATEST").read_text() == "step-000000005\n"
    assert next(checkpoints.verified("best", "val", "max")).step == 2


def test_interrupted_temp_dirs_are_removed_on_start(tmp_path: Path) -> None:
    seed_dir(tmp_path, [100])
    (tmp_path / ".tmp-step-000000200-abcd").mkdir()
    (tmp_path / ".tmp-step-000000200-abcd" / "state.pt").write_bytes(b"half")
    CheckpointDir(tmp_path).prepare()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-000000100"]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_with_a_valid_manifest_is_refused(tmp_path: Path, trainer_log: Any) -> None:
    from trainsup.manifest import digest_file, read_manifest

    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"w": Payload(marker)}, evil)
    probe = tmp_path / "probe.pt"
    probe.write_bytes(evil.getvalue())
    torch.load(probe, weights_only=False)  # positive control: the payload does run
    assert marker.exists()
    marker.unlink()

    from trainsup.trainer import Saving, Session

    root = tmp_path / "ckpt"
    with Session(torch.nn.Linear(2, 2), checkpoint_dir=root, handle_signals=False,
                 saving=Saving(on_exit=False)) as session:
        session.step_done()
        session.save()
    good, bad = root / "step-000000001", root / "step-000000002"
    shutil.copytree(good, bad)
    (bad / "state.pt").write_bytes(evil.getvalue())
    manifest = read_manifest(good)
    files = dict(manifest.files, **{"state.pt": digest_file(bad / "state.pt")})
    (bad / "manifest.json").write_bytes(replace(manifest, files=files, step=2).to_bytes())

    session = Session(torch.nn.Linear(2, 2), checkpoint_dir=root, handle_signals=False)
    session.start()
    session.close()
    assert not marker.exists(), "loading the checkpoint executed code"
    assert session.resumed_from is not None and session.resumed_from.step == 1
    assert any("step-000000002 is not usable: state.pt cannot be loaded safely" in r.getMessage()
               for r in trainer_log.records)


@pytest.mark.parametrize("failing", ["write_file", "fsync_file", "rename"])
def test_a_latest_that_cannot_be_written_leaves_the_save_committed_and_the_old_checkpoints_kept(
        tmp_path: Path, trainer_log: Any, failing: str) -> None:
    """LATEST is a hint written beside the commit: when the disk refuses it the checkpoint is
    still saved and durable, LATEST still names the previous one, no temp file is left, and
    retention waits for a save that could update LATEST."""
    from trainsup.trainer.fsops import FileOps

    class NoLatest(FileOps):
        def write_file(self, path: Path, write: Any) -> None:
            if failing == "write_file" and path.name.startswith(".LATEST.tmp"):
                raise OSError(28, "No space left on device")
            super().write_file(path, write)

        def fsync_file(self, path: Path) -> None:
            if failing == "fsync_file" and path.name.startswith(".LATEST.tmp"):
                raise OSError(5, "Input/output error")
            super().fsync_file(path)

        def rename(self, src: Path, dst: Path) -> None:
            if failing == "rename" and dst.name == "LATEST":
                raise OSError(5, "Input/output error")
            super().rename(src, dst)

    seed_dir(tmp_path, [1, 2])
    checkpoints = CheckpointDir(tmp_path, NoLatest(), Retention(keep_last=1))
    saved = checkpoints.save(3, files_for(3), meta(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-000000001", "step-000000002", "step-000000003"]
    assert saved.step == 3 and read_back(tmp_path) == (3, float(payload(3)[0]))
    assert (tmp_path / "LATEST").read_text() == "step-000000002\n"
    assert any("LATEST" in r.getMessage() and "step-000000003" in r.getMessage() for r in trainer_log.records)
