"""`trainsup status JOB` on what a running attempt's files say: in-memory snapshots (on, or
off and why) and a ready warm standby. A real state dir and store, driven by the fakes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import World
from trainsup.commands.status import job_detail, render_detail
from trainsup.contracts import SNAPSHOTS_FILE, STANDBY_READY_FILE
from trainsup.durable import write_json_atomic


@pytest.fixture
def running(tmp_path: Path) -> tuple[World, str, Path]:
    world = World.make(tmp_path)
    job_id = world.submit(command=["python", "train.py"])
    plan = world.start(job_id)
    world.job_started(plan)
    world.poll()
    return world, job_id, plan.run_dir


def test_status_says_why_snapshots_are_off(running, capsys: pytest.CaptureFixture[str]) -> None:
    world, job_id, run_dir = running
    why = "the state (3100.0 MB) is over the snapshot budget (2147.5 MB)"
    write_json_atomic(run_dir / SNAPSHOTS_FILE, {"on": False, "why_off": why, "every_seconds": 1.0})
    detail = job_detail(world.state, job_id)
    assert detail["snapshots"]["why_off"] == why
    render_detail(detail)
    assert f"in-memory snapshots: off: {why}" in capsys.readouterr().out


def test_status_shows_snapshots_on_and_a_ready_standby(running, capsys: pytest.CaptureFixture[str]) -> None:
    world, job_id, run_dir = running
    write_json_atomic(run_dir / SNAPSHOTS_FILE, {"on": True, "why_off": None, "every_seconds": 1.0})
    standby = world.state.job_dir(job_id) / "standby-2"
    standby.mkdir()
    write_json_atomic(standby / STANDBY_READY_FILE, {"pid": os.getpid(), "attempt": 2, "preloaded": ["torch"],
                                                     "problems": [], "ready_at": world.clock.time()})
    render_detail(job_detail(world.state, job_id))
    out = capsys.readouterr().out
    assert "in-memory snapshots: on, about every 1 s" in out
    assert "warm standby: ready for attempt 2" in out and "preloaded torch" in out


def test_a_standby_whose_process_is_gone_is_not_shown(running) -> None:
    world, job_id, _ = running
    standby = world.state.job_dir(job_id) / "standby-2"
    standby.mkdir()
    write_json_atomic(standby / STANDBY_READY_FILE, {"pid": 2**22 + 7, "attempt": 2, "preloaded": [],
                                                     "problems": [], "ready_at": 0.0})
    assert job_detail(world.state, job_id)["standby"] is None
