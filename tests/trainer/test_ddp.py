"""torchrun / DDP with trainsup.trainer: 2 real gloo processes on CPU, killed and stopped.

`tests/jobs/ddp_job.py` trains a DDP model on a sharded `ResumableSampler` (95 samples:
padded to 96, 48 a rank, 6 optimizer steps an epoch, 3 epochs, a save every 4 steps and
at each epoch's end). Runs interrupted by a SIGKILL of one rank (torchrun, run with
`--max-restarts 0`, then tears the group down) and rerun must end bit-exact equal to
an uninterrupted 2-process run; a stop seen by torchrun or by one rank alone must make
every rank checkpoint and exit 75 together. Under the real daemon: three SIGKILLs (one
inside rank 0's save), a SIGTERM from outside to one rank (torchrun then exits 1, which
the daemon reads as preempted from exit.json) and a daemon stop, then an exact finish.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from trainsup.trainer import ResumableSampler

JOB = Path(__file__).resolve().parents[1] / "jobs" / "ddp_job.py"
_TORCHRUN = Path(sys.executable).parent / "torchrun"
TORCHRUN = [str(_TORCHRUN)] if _TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
STEPS = 18


# -- the sampler's sharding, in one process ---------------------------------------


@pytest.mark.parametrize(("size", "world"), [(10, 3), (12, 4), (7, 2)])
def test_shards_are_distributed_sampler_shards(size: int, world: int) -> None:
    for rank in range(world):
        ours = ResumableSampler(size, shuffle=False, num_replicas=world, rank=rank)
        theirs = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=False)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


def test_shards_cover_the_seeded_epoch_order_and_resume_at_a_global_position() -> None:
    whole = ResumableSampler(10, seed=4)
    shards = [ResumableSampler(10, seed=4, num_replicas=3, rank=r) for r in range(3)]
    order = whole.order()
    assert all(s.total_size == 12 and len(s) == 4 for s in shards)
    assert sorted(i for s in shards for i in s) == sorted(order + order[:2])  # padded like DistributedSampler
    for rank, shard in enumerate(shards):
        assert list(shard) == (order + order[:2])[rank::3]
        shard.set_start(6)  # 6 samples of the epoch done: 2 rounds of 3 ranks
        assert list(shard) == (order + order[:2])[rank::3][2:] and len(shard) == 2
    dropped = ResumableSampler(10, seed=4, num_replicas=3, rank=2, drop_last=True)
    assert dropped.total_size == 9 and list(dropped) == order[2:9:3]


def test_without_a_process_group_nothing_changes() -> None:
    sampler = ResumableSampler(10, seed=1)
    assert sampler.num_replicas == 1 and sampler.total_size == 10
    sampler.set_start(3)
    assert list(sampler) == sampler.order()[3:] and len(sampler) == 7


# -- real torchrun ----------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def _command(tmp: Path, *args: str) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "0", str(JOB),
            "--out", str(tmp / "final.pt"), *args]


def torchrun(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(_command(tmp, "--checkpoint-dir", str(tmp / "ckpt"), *args), env=_env(env),
                          capture_output=True, text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr)


def torchrun_stopped(tmp: Path, env: dict[str, str], stop_when: str, target: str) -> tuple[Run, int]:
    """Start torchrun, and once a rank printed `stop_when`, send SIGTERM to torchrun or to rank 1 only."""
    process = subprocess.Popen(_command(tmp, "--step-delay", "0.15", "--save-every", "100"), env=_env(env),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[int, int] = {}
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        words = line.split()
        if words[:2] == ["event", "rank"] and "pid" in words:
            pids[int(words[2])] = int(words[4])
        if stop_when in line:
            break
    else:
        pytest.fail("".join(lines) + process.stderr.read() if process.stderr else "")
    step_at_stop = int(stop_when.split()[-1])
    os.kill(process.pid if target == "torchrun" else pids[1], signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    return Run(process.returncode, "".join(lines) + stdout, stderr), step_at_stop


def _worker_lines(run: Run) -> str:
    """The trainer's log lines and the job's events, without torchrun's tracebacks."""
    return "\n".join(line for line in (run.stdout + run.stderr).splitlines() if "trainsup" in line or "event" in line)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted 2-process run."""
    tmp = tmp_path_factory.mktemp("ddp-reference")
    run = torchrun(tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    final = torch.load(tmp / "final.pt", weights_only=True)
    assert final["step"] == STEPS
    return final


@pytest.mark.slow
def test_sigkill_of_one_rank_then_torchrun_again_is_bit_exact(reference: dict[str, Any], helpers: Any,
                                                               tmp_path: Path) -> None:
    rnd = random.Random(11)
    plan = [  # the daemon test below kills at random moments; these two land between micro-batches
        f"1:{rnd.randint(1, 3)}:micro",   # rank 1 before the first checkpoint: the rerun starts fresh
        f"0:{rnd.randint(9, 11)}:micro",  # rank 0 mid-step in epoch 1
    ]
    started = time.monotonic()
    for kill in plan:
        run = torchrun(tmp_path, "--kill", kill)
        assert run.returncode != 0, (kill, run.stdout[-2000:])
        assert not (tmp_path / "final.pt").exists(), kill
    run = torchrun(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("resuming from") == 2, "both ranks resume"
    helpers.assert_same(reference, torch.load(tmp_path / "final.pt", weights_only=True))
    print(f"{len(plan)} kills + the finishing run in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_a_stop_on_one_rank_reaches_every_rank_they_save_and_exit_75_together(tmp_path: Path) -> None:
    """SIGTERM to rank 1 alone (the daemon test below also stops torchrun itself, and resumes)."""
    run_dir, beats, ckpt = tmp_path / "run", tmp_path / "hb", tmp_path / "ckpt"
    env = {"TRAINSUP_JOB_ID": "job-1", "TRAINSUP_RUN_DIR": str(run_dir), "TRAINSUP_HEARTBEAT": str(beats),
           "TRAINSUP_CHECKPOINT_DIR": str(ckpt)}
    run, step_at_stop = torchrun_stopped(tmp_path, env, "step 4", "rank-1")
    stops = [line for line in run.stderr.splitlines() if "exit code 75 asks to be resumed" in line]
    assert len(stops) == 2, _worker_lines(run)  # both ranks, at the same step
    assert run.stderr.count("SIGTERM received:") == 1 and "a stop on another rank" in run.stderr, run.stderr[-3000:]
    assert run.returncode == 1, "torchrun exits 1 after its workers exited 75"
    exit_info = json.loads((run_dir / "exit.json").read_text())
    assert exit_info["reason"] == "preempted" and exit_info["step"] >= step_at_stop, exit_info
    saved = ckpt / f"step-{exit_info['step']:09d}"
    assert (saved / "manifest.json").is_file() and len(list(ckpt.glob("step-*"))) == 1
    assert f"step {exit_info['step'] + 1}" not in run.stdout, "no rank trained past the stop"
    beats_by_rank = [json.loads((beats / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [b["step"] for b in beats_by_rank] == [exit_info["step"]] * 2, beats_by_rank
    assert beats_by_rank[0]["pid"] != beats_by_rank[1]["pid"], "each rank beats its own heartbeat"


# -- under the real daemon --------------------------------------------------------

DIE_IN_SAVE_AT = 8  # a save every 4 steps and at each epoch's end (6): checkpoint 6 is the one before


def _log(tmp_path: Path, job: str, attempt: int) -> str:
    path = tmp_path / "state" / "jobs" / job / f"attempt-{attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _events(tmp_path: Path, job: str, attempt: int, rank: int) -> list[tuple[int, int, str]]:
    """(pid, step, what) of each `event rank R pid P (start )step N` line of the attempt."""
    found = re.findall(rf"^event rank {rank} pid (\d+) (start step|step) (\d+)$", _log(tmp_path, job, attempt), re.M)
    return [(int(pid), int(step), what) for pid, what, step in found]


def _trained(tmp_path: Path, job: str, attempt: int, rank: int, steps: int) -> tuple[int, int, int] | None:
    """(pid, start step, step) once `rank` of the attempt trained `steps` steps past its start."""
    events = _events(tmp_path, job, attempt, rank)
    if not events or events[0][2] != "start step" or events[-1][1] < events[0][1] + steps:
        return None
    return events[0][0], events[0][1], events[-1][1]


@pytest.mark.slow
def test_under_the_daemon_three_rank_sigkills_a_rank_sigterm_and_a_stop_all_resume_exactly(
    reference: dict[str, Any], helpers: Any, cli: Any, daemon: Any, tmp_path: Path
) -> None:
    """Attempt 1: rank 0 killed inside its save of checkpoint 8 (after a seeded one of the
    save's 8 file operations); 2, 3: a seeded rank killed a seeded number of steps after it
    resumed; 4: a SIGTERM from outside to rank 1 (both ranks save and exit 75, torchrun exits
    1: read as preempted, from exit.json); 5: a daemon stop (SIGTERM to torchrun). The daemon
    restarts and the job ends equal to an uninterrupted 2-process run, no step lost at a stop."""
    from support import wait_for, write_spec

    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    out, ckpt = tmp_path / "final.pt", tmp_path / "ckpt"
    die_after = rnd.randint(1, 9)  # the counted ops: mkdir, 2 files written and fsynced, dir, LATEST's 2, commit
    command = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "0", str(JOB),
               "--out", str(out), "--step-delay", "0.1", "--die-in-save", f"{DIE_IN_SAVE_AT}:{die_after}",
               "--die-marker", str(tmp_path / "died-in-save")]
    spec = write_spec(tmp_path / "ddp.yaml", name="ddp", command=command, checkpoint_dir=str(ckpt),
                      env={"OMP_NUM_THREADS": "1"}, grace_period="60s",
                      restart={"initial": "0.2s", "max": "1s", "jitter": 0, "max_restarts": 6, "crash_loop": 0})
    daemon.start()
    job = cli.submit(spec)
    run_dir = tmp_path / "state" / "jobs" / job
    notes = [f"seed {seed}: rank 0 dies after op {die_after} of its save of checkpoint {DIE_IN_SAVE_AT}"]

    def why() -> str:
        attempts = cli.job(job)["attempts"]
        lines = [*notes, *(f"attempt {a['number']}: {a['reason']} exit={a['exit_code']} signal={a['signal']} "
                           f"detail={a['detail']}" for a in attempts)]
        for a in attempts:
            lines += [f"--- attempt {a['number']}", *(line for line in _log(tmp_path, job, a["number"]).splitlines()
                                                      if "trainsup" in line or "start step" in line or "dies" in line)]
        return "\n".join(lines)

    def trained(attempt: int, rank: int, steps: int) -> tuple[int, int, int]:
        return wait_for(lambda: _trained(tmp_path, job, attempt, rank, steps), 90, 0.02, f"attempt {attempt} to train")

    # 1: rank 0 SIGKILLs itself inside the save; 2, 3: a seeded rank SIGKILLed from outside
    for attempt in (2, 3):
        rank, steps = rnd.randrange(2), rnd.randint(1, 2)
        pid, start, at = trained(attempt, rank, steps)
        os.kill(pid, signal.SIGKILL)
        notes.append(f"attempt {attempt} started at {start}, rank {rank} killed after step {at}")
    # 4: SIGTERM from outside to rank 1 only
    pid, start, at = trained(4, 1, rnd.randint(1, 2))
    os.kill(pid, signal.SIGTERM)
    notes.append(f"attempt 4 started at {start}, rank 1 got SIGTERM after step {at}")
    # 5: a daemon stop, once it trained
    _, start, at = trained(5, 1, 1)
    notes.append(f"attempt 5 started at {start}, the daemon stopped after step {at}")
    assert daemon.stop(timeout=90) == 0
    status = cli.job(job)
    assert status["state"] == "queued", why()
    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=120)
    attempts = final["attempts"]
    assert final["state"] == "succeeded", why()
    assert [a["reason"] for a in attempts] == ["crash"] * 3 + ["preempted", "interrupted", "succeeded"], why()
    assert attempts[0]["signal"] == signal.SIGKILL or attempts[0]["exit_code"] != 0, why()

    # the kill inside the save: the next attempt resumed from checkpoint 6, or 8 if the rename was done
    # (renames are not counted: op 9 is the parent's fsync right after them)
    assert "event rank 0 dies in the save after op" in _log(tmp_path, job, 1), why()
    resumed = 8 if die_after >= 9 else 6
    assert _log(tmp_path, job, 2).count(f"resuming from {ckpt / f'step-{resumed:09d}'}") == 2, why()
    # the outside SIGTERM and the daemon stop: both ranks saved at the same step and exited 75
    for attempt, received in ((4, 1), (5, 2)):
        log = _log(tmp_path, job, attempt)
        saved = json.loads((run_dir / f"attempt-{attempt}.run" / "exit.json").read_text())
        assert saved["reason"] == "preempted", why()
        assert log.count("exit code 75 asks to be resumed") == 2 and log.count("SIGTERM received:") == received, why()
        beats = [json.loads((run_dir / f"attempt-{attempt}.run" / "heartbeat" / f"rank-{r}.json").read_text())
                 for r in (0, 1)]
        assert [b["step"] for b in beats] == [saved["step"]] * 2 and beats[0]["pid"] != beats[1]["pid"], why()
        assert f"event rank 0 pid {beats[0]['pid']} step {saved['step'] + 1}\n" not in log, "no rank trained past the stop"
        assert [e[1] for e in _events(tmp_path, job, attempt + 1, 0)[:1]] == [saved["step"]], "0 steps lost"
        at_stop = ckpt / f"step-{saved['step']:09d}"
        assert _log(tmp_path, job, attempt + 1).count(f"resuming from {at_stop}") == 2, why()
    assert attempts[3]["exit_code"] == 1, "torchrun's own exit status after its workers exited 75"
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".tmp-")], why()
    helpers.assert_same(reference, torch.load(out, weights_only=True))
