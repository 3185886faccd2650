"""The same job file on a real single-node Slurm: `submit --slurm`, `trainsup run` inside it.

One cluster for the module (tests/slurm_cluster.py), and every Slurm job submitted at
once by the `submitted` fixture, so that they run side by side: the time-limit job alone
takes two or three allocations of a minute each. Skipped with the reason where Slurm is
not installed or we are not root (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import slurm_cluster
from support import JOBS, Cli, wait_for, write_spec

pytestmark = [pytest.mark.slow, pytest.mark.skipif(slurm_cluster.missing() is not None,
                                                    reason=slurm_cluster.missing() or "")]

STEPS_PER_EPOCH = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.SlurmCluster]:
    handle = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        handle.start()
    except RuntimeError as exc:
        handle.stop()
        pytest.fail(f"the test cluster did not start: {exc}")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slurm-home")


@pytest.fixture(scope="module")
def cli(cluster: slurm_cluster.SlurmCluster, home: Path) -> Cli:
    config = home / "config.yaml"
    config.write_text("standby: false\n")
    (home / "tmp").mkdir()
    env = {**os.environ, **cluster.env, "TRAINSUP_HOME": str(home / "state"), "TRAINSUP_CONFIG": str(config),
           "TMPDIR": str(home / "tmp")}  # `trainsup run` keeps its node-local state in $TMPDIR
    env.pop("NOTIFY_SOCKET", None)
    return Cli(env)


def _job(home: Path, name: str, *args: str, **fields) -> Path:
    folder = home / name
    folder.mkdir()
    fields = {"checkpoint_dir": "ckpt", "grace_period": "30s", "restart": {"initial": "1s", "max": "2s"}, **fields}
    return write_spec(folder / "job.yaml", name=name, command=[
        sys.executable, str(JOBS / "slurm_job.py"), "--out", str(folder / "out.json"), *args], **fields)


@pytest.fixture(scope="module")
def submitted(cli: Cli, home: Path) -> dict[str, str]:
    """Every Slurm job of the module, submitted at once: name → Slurm id."""
    jobs = {
        "crash-once": _job(home, "crash-once", "--crash-at", "6"),
        # USR1 comes 15 s before the 1-minute limit (grace_period + 10 s), or up to 30 s earlier (Slurm
        # checks every 30 s and signals early rather than late): 96 steps of 0.5 s take more than one
        # allocation can hold, and two or three allocations in all.
        "time-limit": _job(home, "time-limit", "--epochs", "8", "--step-delay", "0.5", "--save-every", "12",
                           grace_period="5s", slurm={"time": "1m"}),
        "cancel-me": _job(home, "cancel-me", "--epochs", "500", "--step-delay", "0.3"),
        "fails": _job(home, "fails", "--crash-at", "2", "--crash-always", restart={"max_restarts": 1, "initial": "1s"}),
    }
    return {name: cli.json("submit", str(spec), "--slurm")["slurm_id"] for name, spec in jobs.items()}


def _final(cli: Cli, slurm_id: str, timeout: float) -> dict:
    """`status --json` of the Slurm job once Slurm says it ended."""
    return wait_for(lambda: (s := cli.json("status", f"slurm:{slurm_id}"))["slurm"] and s["slurm"]["state"] in
                    slurm_cluster.FINISHED_STATES and s, timeout, 1.0, f"Slurm job {slurm_id} to end")


def _log(cli: Cli, slurm_id: str) -> str:
    return cli.run("logs", f"slurm:{slurm_id}").stdout


def _explain(cluster: slurm_cluster.SlurmCluster, cli: Cli, slurm_id: str) -> str:
    return f"--- log\n{_log(cli, slurm_id)}\n--- cluster\n{cluster.logs()}"


def test_a_crash_restarts_within_the_allocation(cluster, cli: Cli, home: Path, submitted: dict[str, str]) -> None:
    slurm_id = submitted["crash-once"]
    final = _final(cli, slurm_id, 240)
    log = _log(cli, slurm_id)
    assert final["slurm"]["state"] == "COMPLETED", _explain(cluster, cli, slurm_id)
    assert final["slurm"]["restarts"] == 0
    assert json.loads((home / "crash-once" / "out.json").read_text()) == {"step": 2 * STEPS_PER_EPOCH, "attempt": 2}
    assert "event crash at step 6" in log and "previous ended: crash" in log and "event start step 4 attempt 2" in log
    assert (final["state"], final["report"]["attempt"], final["report"]["allocation"]) == ("succeeded", 2, 1)
    text = cli.run("status", f"slurm:{slurm_id}").stdout
    assert "succeeded" in text and "attempt 2, requeued 0 times" in text
    followed = cli.run("logs", "crash-once", "-f")  # by name: no local job has it; -f ends with the job
    assert followed.stdout == log and followed.returncode == 0


def test_scancel_ends_it_cancelled(cluster, cli: Cli, submitted: dict[str, str]) -> None:
    slurm_id = submitted["cancel-me"]
    wait_for(lambda: "event step 3\n" in _log(cli, slurm_id), 180, 0.5, "the job to make steps")
    answer = cli.json("cancel", f"slurm:{slurm_id}")
    assert answer["requested"] and answer["message"].startswith(f"asked Slurm to cancel job {slurm_id}")
    final = _final(cli, slurm_id, 120)
    assert final["slurm"]["state"] == "CANCELLED" and final["state"] == "cancelled"
    assert final["slurm"]["restarts"] == 0
    report = wait_for(lambda: (r := cli.json("status", f"slurm:{slurm_id}")["report"]) and r["state"] == "cancelled"
                      and r, 60, 0.5, "trainsup run to report the cancel")
    assert report["stop"] == "cancel"
    log = _log(cli, slurm_id)
    assert "the Slurm job was cancelled: cancelling the job" in log and "job cancelled" in log
    again = cli.run("cancel", f"slurm:{slurm_id}", check=False)
    assert again.returncode == 1 and "already ended: cancelled" in again.stderr


def test_a_real_failure_ends_the_slurm_job_failed_with_the_reason(cluster, cli: Cli,
                                                                  submitted: dict[str, str]) -> None:
    slurm_id = submitted["fails"]
    final = _final(cli, slurm_id, 240)
    assert final["slurm"]["state"] == "FAILED", _explain(cluster, cli, slurm_id)
    assert final["state"] == "failed" and final["report"]["state"] == "failed"
    assert final["slurm"]["comment"].startswith("trainsup: failed: ")
    assert "──── trainsup: job failed: " in _log(cli, slurm_id)
    assert final["slurm"]["restarts"] == 0


def test_status_lists_slurm_jobs_marked_as_such(cli: Cli, submitted: dict[str, str]) -> None:
    rows = [row for row in cli.json("status") if row.get("kind") == "slurm"]
    assert {row["slurm_id"] for row in rows} >= set(submitted.values())
    text = cli.run("status").stdout
    assert "Slurm jobs:" in text and f"slurm:{submitted['crash-once']}" in text
    shown = cli.run("show", f"slurm:{submitted['crash-once']}").stdout
    assert "#SBATCH --requeue" in shown and "#SBATCH --signal=B:USR1@40" in shown


@pytest.mark.timeout(480)  # usually 1.5-2.5 minutes: two or three 1-minute allocations and their requeues
def test_the_time_limit_checkpoints_requeues_and_finishes_later(cluster, cli: Cli, home: Path,
                                                                 submitted: dict[str, str]) -> None:
    slurm_id = submitted["time-limit"]
    running = wait_for(lambda: (s := cli.json("status", f"slurm:{slurm_id}"))["state"] == "running" and s, 120, 0.5,
                       "the time-limit job to run")
    assert running["status"].startswith(f"running on node {cluster.host}")
    final = _final(cli, slurm_id, 420)
    log = _log(cli, slurm_id)
    assert final["slurm"]["state"] == "COMPLETED", _explain(cluster, cli, slurm_id)
    assert final["slurm"]["restarts"] >= 1, log
    # USR1 20 s before the limit; Slurm's own SIGTERM at the limit if its 30-second check came late
    assert "asking the job to checkpoint and stop, then requeue the Slurm job" in log
    assert f"requeueing Slurm job {slurm_id}" in log
    assert f"allocation {final['slurm']['restarts'] + 1} on" in log
    # The last allocation resumed from the checkpoint taken at the signal, and ended at the right step.
    assert json.loads((home / "time-limit" / "out.json").read_text())["step"] == 8 * STEPS_PER_EPOCH
    # Each allocation after the first started at the step its predecessor checkpointed on the signal.
    saved = [int(m) for m in re.findall(r"stopping on SIGTERM after checkpoint step-(\d+)", log)]
    starts = [int(m) for m in re.findall(r"^event start step (\d+) ", log, re.M)]
    assert len(saved) == final["slurm"]["restarts"] and starts == [0, *saved], (saved, starts)
    assert final["state"] == "succeeded" and final["report"]["allocation"] == final["slurm"]["restarts"] + 1
    assert f"requeued {final['slurm']['restarts']} time" in cli.run("status", f"slurm:{slurm_id}").stdout
