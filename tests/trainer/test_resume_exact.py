"""Real subprocesses killed at random points, resumed, and compared bit for bit."""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow


def kill_plan(seed: int) -> list[tuple[str, dict[str, str]]]:
    """Increasing kill points in a 3-epoch, 8-steps-per-epoch run saving every 3 steps:
    mid-accumulation, inside a save (after a random file-system step), at an epoch
    boundary, and mid-epoch."""
    rnd = random.Random(seed)
    return [
        (f"event micro {rnd.randint(1, 5)} 1", {}),                       # between micro-batches 1 and 2
        (f"event saveop {rnd.randint(1, 13)} ", {"TEST_SLOW_SAVE": "0.03"}),  # first save of the attempt
        ("event epoch 2", {}),                                              # right after the epoch-1 save
        (f"event step {rnd.randint(19, 23)}", {}),                          # mid-epoch, last epoch
    ]


@pytest.mark.parametrize(("workers", "in_background"), [(0, False), (2, True)], ids=["workers0-sync", "workers2-background"])
def test_sigkill_at_random_points_then_resume_is_bit_exact(
    helpers: Any, reference_run: dict[str, Any], tmp_path: Path, workers: int, in_background: bool
) -> None:
    args = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "final.pt"), "--workers", str(workers)]
    if in_background:
        args.append("--save-in-background")  # the kill inside a save then hits the background thread
    plan = kill_plan(seed=workers)
    if workers:
        plan = [plan[1], plan[3]]  # fewer restarts where each costs worker start-up
    for kill_on, env in plan:
        run = helpers.run_script(args, env=env, kill_on=kill_on)
        assert run.returncode == -signal.SIGKILL, (kill_on, run.returncode, run.stderr[-2000:])
    run = helpers.run_script(args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stderr
    helpers.assert_same(reference_run["final"], torch.load(tmp_path / "final.pt", weights_only=True))


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(
    helpers: Any, reference_run: dict[str, Any], tmp_path: Path
) -> None:
    run_dir, beats = tmp_path / "run", tmp_path / "hb"
    env = {"TRAINSUP_JOB_ID": "job-1", "TRAINSUP_RUN_DIR": str(run_dir), "TRAINSUP_HEARTBEAT": str(beats),
           "TRAINSUP_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "TEST_SLOW_SAVE": "0.03"}
    args = ["--out", str(tmp_path / "final.pt"), "--save-every", "100"]
    # a second SIGTERM lands in the middle of the checkpoint the first one asked for; the
    # pause after each step lets the first land before step 6 ends on a loaded machine
    run = helpers.run_script(args + ["--step-delay", "0.3"], env=env, kill_on="event step 5", sig=signal.SIGTERM,
                             then=("event saveop 3", signal.SIGTERM))
    assert run.returncode == 75, run.stderr[-3000:]
    assert json.loads((run_dir / "exit.json").read_text()) == {
        "reason": "preempted", "step": 6, "detail": "SIGTERM: checkpoint step-000000006 saved"}
    assert "event step 5" in run.lines and "event step 6" not in run.lines
    assert "received again: still finishing the checkpoint" in run.stderr
    beat = json.loads((beats / "rank-0.json").read_text())
    assert beat["step"] == 6 and beat["pid"] > 0

    env.pop("TEST_SLOW_SAVE")
    run = helpers.run_script(args, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stderr and "step-000000006" in run.stderr
    helpers.assert_same(reference_run["final"], torch.load(tmp_path / "final.pt", weights_only=True))


def test_architecture_change_exits_1_with_one_line(helpers: Any, reference_run: dict[str, Any],
                                                   tmp_path: Path) -> None:
    shutil.copytree(reference_run["checkpoint_dir"], tmp_path / "ckpt")
    args = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "final.pt")]
    run = helpers.run_script(args + ["--hidden", "32", "--epochs", "4"])
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: The model does not match checkpoint step-000000024: '0.weight' has shape (32, 8)")
    assert "Traceback" not in run.stderr
