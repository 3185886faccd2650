"""A job's `stop_signal` is what a stop sends, and only to its main process. Real daemon, real signals."""

from __future__ import annotations

import sys
from pathlib import Path

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable


def _witness(tmp_path: Path, name: str) -> tuple[Path, Path]:
    out = tmp_path / name
    out.mkdir()
    spec = write_spec(tmp_path / f"{name}.yaml", name=name, command=[PY, str(JOBS / "signal_witness.py"), str(out)],
                      stop_signal="SIGINT", grace_period="30s", restart={"max_restarts": 0})
    return spec, out


def _heard(out: Path, who: str) -> list[str]:
    path = out / who
    return path.read_text().splitlines() if path.exists() else []


def test_cancel_and_daemon_stop_send_the_jobs_stop_signal_to_its_main_process_only(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    cli.run("group", "set", "default", "2")  # both at once, whatever the number of cores
    (cancelled_spec, cancelled_out), (stopped_spec, stopped_out) = _witness(tmp_path, "c"), _witness(tmp_path, "s")
    daemon.start()
    cancelled, stopped = cli.submit(cancelled_spec), cli.submit(stopped_spec)
    wait_for(lambda: (cancelled_out / "ready").exists() and (stopped_out / "ready").exists(), 30, 0.05,
             "both jobs to handle their signals")

    cli.run("cancel", cancelled)
    final = cli.wait_state(cancelled, "cancelled", "failed", "succeeded", timeout=30)
    [attempt] = final["attempts"]
    assert (final["state"], attempt["reason"], attempt["exit_code"]) == ("cancelled", "cancelled", 75), final
    assert _heard(cancelled_out, "main") == ["main got SIGINT"], "SIGINT, not SIGTERM, and once"
    assert _heard(cancelled_out, "child") == [], "the child is the main process's to stop"

    assert daemon.stop(timeout=30) == 0
    status = cli.job(stopped)
    [attempt] = status["attempts"]
    assert (status["state"], attempt["reason"], attempt["exit_code"]) == ("queued", "interrupted", 75), status
    assert _heard(stopped_out, "main") == ["main got SIGINT"]
    assert _heard(stopped_out, "child") == []
