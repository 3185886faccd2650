"""A `.lock` planted in a job's checkpoint dir: the daemon's monitor never writes through it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support import Cli, DaemonProcess, write_spec
from trainsup.contracts import Heartbeat, heartbeat_path, write_heartbeat
from trainsup.doctor import check_disk


def test_a_planted_lock_symlink_fails_the_job_in_one_sentence_and_leaves_its_target_alone(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("precious\n")
    checkpoints = tmp_path / "shared-ckpt"
    checkpoints.mkdir()
    (checkpoints / ".lock").symlink_to(victim)
    daemon.start()
    job = cli.submit(write_spec(tmp_path / "job.yaml", name="victim", command="echo ran", checkpoint_dir=str(checkpoints)))
    final = cli.wait_state(job, "failed", "succeeded", timeout=30)
    assert final["state"] == "failed"
    assert victim.read_text() == "precious\n", "nothing was written through the planted link"
    assert "symbolic link" in final["result"] and str(checkpoints / ".lock") in final["result"]
    assert "ran" not in cli.run("logs", job).stdout, "the job never ran without its lock"


def test_heartbeat_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_heartbeat(tmp_path / "hb", Heartbeat(rank=0, time=1.0, step=1, epoch=0, phase="train", pid=1))
    finally:
        os.umask(old)
    path = heartbeat_path(tmp_path / "hb", 0)
    assert json.loads(path.read_text())["step"] == 1
    assert path.stat().st_mode & 0o077 == 0 and (tmp_path / "hb").stat().st_mode & 0o077 == 0


def test_doctor_calls_a_file_system_without_a_size_unknown_not_full(monkeypatch, tmp_path: Path) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, 0))  # a FUSE mount
    check = check_disk(tmp_path)
    assert check.ok is None and "does not report its size" in check.detail
