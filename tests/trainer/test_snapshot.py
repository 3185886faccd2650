"""In-memory snapshots between disk checkpoints: used when newer and valid for this boot,
ignored otherwise (another boot, a failed verification, older than disk, another dir),
bounded by a budget, and bit-exact across real SIGKILLs."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup.trainer import ResumableSampler, Saving, Session, Snapshots
from trainsup.trainer.snapshot import STATUS_FILE, TOKEN_FILE, snapshot_dir

DATA = TensorDataset(torch.arange(48), torch.randn(48, 4, generator=torch.Generator().manual_seed(0)))
NO_DISK_SAVES = Saving(every_steps=None, every_seconds=None, every_epoch=False, on_exit=False)
EVERY_STEP = 1e-6  # seconds: a snapshot at every step boundary (once the previous one is written)


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def open_session(path: Path, root: Path, *, saving: Saving = NO_DISK_SAVES, run_dir: Path | None = None,
                 **options: Any) -> tuple[Session, torch.nn.Module, torch.optim.Optimizer]:
    model, optimizer = make()
    environ = {"TRAINSUP_RUN_DIR": str(run_dir)} if run_dir else {}
    session = Session(model, optimizer, checkpoint_dir=path, saving=saving, handle_signals=False, environ=environ,
                      snapshots=Snapshots(root=root, **{"every_seconds": EVERY_STEP, **options}))
    return session.start(), model, optimizer


def run_steps(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, until: int) -> None:
    """Train until `session.step == until`, and end with a snapshot of that step, written."""
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    for _ in session.epochs(4):
        for step in session.steps(loader):
            for _, x in step:
                model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            session.step_done()
            if session.step == until:
                snapshots = session._snapshots  # the interval adapts to the write time: take this one for sure
                snapshots.settle()
                if snapshots.on and snapshots.last_step != until:
                    snapshots.take(session.step, session._collect(), session._meta())
                    snapshots.settle()
                return


def killed_run(path: Path, root: Path, until: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A run that stops at step `until` without exiting the session (as a SIGKILL would)."""
    session, model, optimizer = open_session(path, root, **kwargs)
    run_steps(session, model, optimizer, until)
    session.close()
    return {k: v.clone() for k, v in model.state_dict().items()}


def snapshots_of(path: Path, root: Path) -> list[str]:
    where = snapshot_dir(path, root)
    return sorted(p.name for p in where.glob("step-*")) if where.is_dir() else []


def resume_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "resume.json").read_text())


def test_newer_snapshot_is_used_and_removed_when_the_run_finishes(tmp_path: Path, trainer_log: Any) -> None:
    ckpt, root, run_dir = tmp_path / "ckpt", tmp_path / "shm", tmp_path / "run"
    weights = killed_run(ckpt, root, 7, saving=Saving(every_steps=3, every_seconds=None, on_exit=False))
    assert snapshots_of(ckpt, root) == ["step-000000007"]
    session, model, optimizer = open_session(ckpt, root, run_dir=run_dir, saving=Saving(every_seconds=None))
    assert session.step == 7 and session.resumed_from.name == "step-000000007"
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert "resumed from in-memory snapshot at step 7, newer than disk step-000000006" in trainer_log.text
    record = resume_json(run_dir)
    assert (record["select"], record["step"], record["disk"]) == ("snapshot", 7, "step-000000006")
    with session:
        run_steps(session, model, optimizer, 9)
    assert (ckpt / "step-000000009").is_dir(), "the steps only a snapshot held are saved to disk at the end"
    assert not snapshot_dir(ckpt, root).exists()


def test_snapshot_from_another_boot_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               trainer_log: Any) -> None:
    ckpt, root, run_dir = tmp_path / "ckpt", tmp_path / "shm", tmp_path / "run"
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-aaaa\n")
    monkeypatch.setenv("TRAINSUP_BOOT_ID_FILE", str(boot))
    killed_run(ckpt, root, 5, saving=Saving(every_steps=3, every_seconds=None, on_exit=False))
    assert snapshots_of(ckpt, root) == ["step-000000005"]
    boot.write_text("22222222-bbbb\n")  # a reboot (on a real one tmpfs is empty as well)
    session, _, _ = open_session(ckpt, root, run_dir=run_dir)
    session.close()
    assert session.step == 3 and session.resumed_from.name == "step-000000003"
    assert "in-memory snapshot step-000000005 is not used: it was taken before a reboot" in trainer_log.text
    assert resume_json(run_dir)["skipped"] == [{"checkpoint": "snapshot step-000000005",
                                                "why": "it was taken before a reboot"}]
    assert snapshots_of(ckpt, root) == [], "a stale snapshot is removed"


def test_snapshot_that_fails_verification_is_ignored(tmp_path: Path, trainer_log: Any) -> None:
    ckpt, root, run_dir = tmp_path / "ckpt", tmp_path / "shm", tmp_path / "run"
    killed_run(ckpt, root, 5, saving=Saving(every_steps=3, every_seconds=None, on_exit=False))
    state = snapshot_dir(ckpt, root) / "step-000000005" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    session, _, _ = open_session(ckpt, root, run_dir=run_dir)
    session.close()
    assert session.step == 3
    assert "state.pt does not match its" in trainer_log.text  # sha256, or blake3
    skipped = resume_json(run_dir)["skipped"]
    assert skipped[0]["checkpoint"] == "snapshot step-000000005" and "does not match" in skipped[0]["why"]


def test_snapshot_older_than_the_disk_checkpoint_is_ignored(tmp_path: Path, trainer_log: Any) -> None:
    ckpt, root = tmp_path / "ckpt", tmp_path / "shm"
    killed_run(ckpt, root, 5)
    kept = tmp_path / "kept"
    shutil.copytree(snapshot_dir(ckpt, root), kept)
    killed_run(ckpt, root, 8, saving=Saving(every_steps=8, every_seconds=None, on_exit=False))
    shutil.rmtree(snapshot_dir(ckpt, root))
    shutil.copytree(kept, snapshot_dir(ckpt, root))  # the snapshot of step 5 outlived the disk save of step 8
    session, _, _ = open_session(ckpt, root)
    session.close()
    assert session.step == 8 and session.resumed_from.name == "step-000000008"
    assert "in-memory snapshot step-000000005 is not used: it is not newer than disk step-000000008" in trainer_log.text


def test_snapshot_of_a_deleted_and_remade_checkpoint_dir_is_ignored(tmp_path: Path, trainer_log: Any) -> None:
    ckpt, root = tmp_path / "ckpt", tmp_path / "shm"
    killed_run(ckpt, root, 5)
    shutil.rmtree(ckpt)  # the user starts over at the same path
    session, _, _ = open_session(ckpt, root)
    session.close()
    assert session.step == 0 and session.resumed_from is None
    assert "it was taken for another checkpoint dir at this path" in trainer_log.text


def test_state_over_the_budget_is_not_snapshotted_and_said(tmp_path: Path, trainer_log: Any) -> None:
    ckpt, root, run_dir = tmp_path / "ckpt", tmp_path / "shm", tmp_path / "run"
    session, model, optimizer = open_session(ckpt, root, run_dir=run_dir, budget_bytes=100)
    run_steps(session, model, optimizer, 4)
    session.close()
    assert snapshots_of(ckpt, root) == [] and not (ckpt / TOKEN_FILE).exists()
    assert sum("over the snapshot budget" in r.getMessage() for r in trainer_log.records) == 1
    status = json.loads((run_dir / STATUS_FILE).read_text())
    assert status["on"] is False and "over the snapshot budget (0.0 MB)" in status["why_off"]


def test_turned_off_by_the_environment(tmp_path: Path) -> None:
    model, optimizer = make()
    session = Session(model, optimizer, checkpoint_dir=tmp_path / "ckpt", saving=NO_DISK_SAVES, handle_signals=False,
                      environ={"TRAINSUP_SNAPSHOTS": "off"},
                      snapshots=Snapshots(root=tmp_path / "shm", every_seconds=EVERY_STEP)).start()
    run_steps(session, model, optimizer, 3)
    session.close()
    assert snapshots_of(tmp_path / "ckpt", tmp_path / "shm") == []


# -- real processes, real SIGKILLs ------------------------------------------------------

def _resumed_step(stderr: str) -> int:
    found = re.findall(r"resuming from \S+: epoch \d+, step (\d+)", stderr)
    return int(found[-1]) if found else 0


@pytest.mark.slow
def test_sigkill_with_snapshots_loses_fewer_steps_and_stays_bit_exact(
    helpers: Any, reference_run: dict[str, Any], tmp_path: Path
) -> None:
    """Disk saves only at epoch ends (every 8 steps); snapshots every 50 ms of 50 ms steps;
    two SIGKILLs at random steps, each resumed from the snapshot the kill left."""
    args = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "final.pt"),
            "--save-every", "100", "--step-delay", "0.05"]
    env = {"TRAINSUP_SNAPSHOTS": "0.05"}
    kills = sorted(random.Random(5).sample([4, 5, 6, 7, 11, 12, 13, 14, 15, 20, 21, 22, 23], 2))
    runs = []
    for kill in kills:
        runs.append(helpers.run_script(args, env=env, kill_on=f"event step {kill}"))
        assert runs[-1].returncode == -signal.SIGKILL, runs[-1].stderr[-2000:]
    final = helpers.run_script(args, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    helpers.assert_same(reference_run["final"], torch.load(tmp_path / "final.pt", weights_only=True))
    following = [*runs[1:], final]
    assert all("resumed from in-memory snapshot" in run.stderr for run in following)
    lost = [kill - _resumed_step(run.stderr) for kill, run in zip(kills, following)]
    lost_disk_only = [kill - kill // 8 * 8 for kill in kills]
    assert sum(lost) < sum(lost_disk_only), (kills, lost, lost_disk_only)
    assert max(lost) <= 3, (kills, lost)


def test_snapshots_of_a_checkpoint_dir_that_is_gone_are_removed_on_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "shm"
    killed_run(tmp_path / "gone", root, 3)
    shutil.rmtree(tmp_path / "gone")
    assert snapshot_dir(tmp_path / "gone", root).is_dir()
    open_session(tmp_path / "other", root)[0].close()
    assert not snapshot_dir(tmp_path / "gone", root).exists()
