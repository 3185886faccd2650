"""Retention frees old checkpoints in a background thread, off the save's critical path:
a save returns once the old checkpoint is renamed out of the resume order, and a process
killed while the bytes are being freed leaves a `.expired-` dir that the next start removes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from trainsup.trainer import FileOps, Saving, Session
from trainsup.trainer.checkpoints import CheckpointDir, Retention
from trainsup.trainer.fsops import wait_for_removals

REPO = Path(__file__).resolve().parents[2]


def meta(step: int) -> dict[str, Any]:
    return {"epoch": 0, "position": step, "torch_version": torch.__version__, "created": time.time()}


def files_for(step: int) -> dict[str, Any]:
    return {"state.pt": lambda f: torch.save({"w": torch.full((64,), float(step))}, f)}


class HeldRemovals(FileOps):
    """Removals wait until `release` is set; `started` says one is under way."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.removers: list[str] = []

    def remove_tree(self, path: Path) -> None:
        self.removers.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(30)
        super().remove_tree(path)


def test_a_save_returns_while_the_old_checkpoint_is_still_being_freed(tmp_path: Path) -> None:
    ops = HeldRemovals()
    checkpoints = CheckpointDir(tmp_path, ops, Retention(keep_last=1))
    checkpoints.prepare()
    checkpoints.save(1, files_for(1), meta(1))
    checkpoints.save(2, files_for(2), meta(2))  # returns with the removal of step 1 held
    assert ops.started.wait(10)
    assert [p.name for p in checkpoints.step_dirs()] == ["step-000000002"]
    expired = [p.name for p in tmp_path.iterdir() if p.name.startswith(".expired-")]
    assert len(expired) == 1 and expired[0].startswith(".expired-step-000000001-"), expired
    assert next(checkpoints.verified()).step == 2
    ops.release.set()
    wait_for_removals()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-000000002"]
    assert ops.removers and all(name.startswith("trainsup-remove") for name in ops.removers), ops.removers


def test_a_removal_cut_short_is_finished_by_the_next_start(tmp_path: Path, trainer_log: Any) -> None:
    checkpoints = CheckpointDir(tmp_path, retention=Retention(keep_last=None))
    checkpoints.prepare()
    checkpoints.save(1, files_for(1), meta(1))
    half = tmp_path / ".expired-step-000000000-1a2b3c4d"
    half.mkdir()
    (half / "state.pt").write_bytes(b"half freed")
    CheckpointDir(tmp_path).prepare()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-000000001"]
    assert any(".expired-step-000000000-1a2b3c4d left by retention" in r.getMessage() for r in trainer_log.records)


def test_a_session_waits_for_its_removals_before_it_lets_go_of_the_dir(tmp_path: Path) -> None:
    model = torch.nn.Linear(256, 256)
    with Session(model, checkpoint_dir=tmp_path, handle_signals=False, environ={"TRAINSUP_SNAPSHOTS": "0"},
                 saving=Saving(every_steps=1, every_seconds=None, on_exit=False),
                 retention=Retention(keep_last=1)) as session:
        for _ in range(4):
            session.step_done()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock"))
    assert [n for n in names if n.startswith("step-")] == ["step-000000004"]
    assert not [n for n in names if n.startswith(".expired-")], names


SAVER = """
import sys, time, torch
from pathlib import Path
from trainsup.trainer import FileOps
from trainsup.trainer.checkpoints import CheckpointDir, Retention

def say(line):  # one write: print() writes the newline apart, and the remover's thread prints too
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

class Announced(FileOps):
    def remove_tree(self, path):
        say(f"removing {path.name}")
        time.sleep(0.02)
        super().remove_tree(path)

root = Path(sys.argv[1])
checkpoints = CheckpointDir(root, Announced(), Retention(keep_last=1))
checkpoints.prepare()
weights = torch.arange(1 << 20, dtype=torch.float32)
for step in range(int(sys.argv[2]), 10**6):
    state = {"w": weights + step}
    checkpoints.save(step, {"state.pt": lambda f: torch.save(state, f)},
                     {"epoch": 0, "position": step, "torch_version": torch.__version__, "created": 0.0})
    say(f"saved {step}")
"""


def run_until_killed(root: Path, first: int, kill_on: str | None, after_s: float) -> list[int]:
    """Save checkpoints from step `first` on, SIGKILLed on the first line starting with
    `kill_on` (else `after_s` after the first save returned); the steps whose save returned."""
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(root), str(first)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    assert proc.stdout is not None
    saved: list[int] = []
    timer = threading.Timer(after_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    try:
        for line in proc.stdout:
            if line.startswith("saved "):
                saved.append(int(line.split()[1]))
                if kill_on is None and len(saved) == 1:
                    timer.start()
            if kill_on is not None and line.startswith(kill_on):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return saved


def test_sigkill_while_retention_frees_checkpoints_loses_nothing(tmp_path: Path) -> None:
    rnd = random.Random(13)
    kills = [("removing .expired-step-", 0.0) for _ in range(3)] + [(None, rnd.uniform(0.0, 0.5)) for _ in range(4)]
    rnd.shuffle(kills)
    step = 1
    for kill_on, after_s in kills:
        saved = run_until_killed(tmp_path, step, kill_on, after_s)
        checkpoints = CheckpointDir(tmp_path, retention=Retention(keep_last=1))
        checkpoints.prepare()
        left = sorted(p.name for p in tmp_path.iterdir())
        assert not [n for n in left if n.startswith(".")], left
        newest = next(checkpoints.verified())  # every byte checked
        state = torch.load(newest.path / "state.pt", weights_only=True)
        assert torch.equal(state["w"], torch.arange(1 << 20, dtype=torch.float32) + newest.step)
        if saved:
            assert newest.step >= saved[-1], (newest.step, saved)  # a save that returned survives
        step = newest.step + 1
