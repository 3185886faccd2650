"""Clean-up: `clean` and `remove` through the real CLI and daemon, pruning old attempts, doctor's size."""

from __future__ import annotations

import shutil
from pathlib import Path

from fakes import World
from support import Cli, DaemonProcess, wait_for, write_spec
from trainsup.contracts import STARTED_FILE
from trainsup.cleanup import disk_usage, keep_attempts, named_checkpoint_dir, prune_attempts
from trainsup.doctor import check_state_size
from trainsup.jobs import inbox
from trainsup.jobs.states import JobState
from trainsup.paths import StateDir
from trainsup.record import RECORD_FILE

WRITE = 'head -c {size} /dev/urandom > "$TRAINSUP_CHECKPOINT_DIR/weights.bin"'


def _finished(cli: Cli, tmp_path: Path, name: str, command: str, **fields) -> str:
    job_id = cli.submit(write_spec(tmp_path / f"{name}.yaml", name=name, command=command,
                                   restart={"max_restarts": 0}, **fields))
    return job_id


def test_clean_frees_what_the_dry_run_says_keeps_named_checkpoints_and_refuses_a_running_job(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    state = StateDir(tmp_path / "state")
    named = tmp_path / "runs" / "b"
    daemon.start()
    a = _finished(cli, tmp_path, "a", WRITE.format(size=200_000))
    b = _finished(cli, tmp_path, "b", WRITE.format(size=300_000) + "; exit 3", checkpoint_dir=str(named))
    live = _finished(cli, tmp_path, "live", "exec sleep 60")
    cli.wait_state(a, "succeeded")
    cli.wait_state(b, "failed")
    cli.wait_state(live, "running")

    refused = cli.run("remove", live, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"trainsup: job {live} is running; only a finished job can be removed (`trainsup cancel {live}` stops it first)."]
    cli.run("cancel", "--force", live)
    cli.wait_state(live, "cancelled")

    # A finished attempt's record.json (trainsup.record, gathered in the background) may still
    # arrive and change the sizes: measure once every attempt that ran has its record.
    run_dirs = list((state.root / "jobs").glob("*/attempt-*.run"))
    wait_for(lambda: all((d / RECORD_FILE).exists() for d in run_dirs if (d / STARTED_FILE).exists()),
             120, 0.2, "every attempt's record.json")
    plan = cli.json("clean", "--all", "--dry-run")
    assert sorted(job["id"] for job in plan["jobs"]) == sorted([a, b, live])
    assert 200_000 <= plan["bytes"] < 500_000  # b's named dir stays
    before = disk_usage([state.root / "jobs", named])
    done = cli.json("clean", "--all")
    after = disk_usage([state.root / "jobs", named])
    assert done["not_removed"] == [] and done["freed"] == plan["bytes"] == before - after
    assert (named / "weights.bin").stat().st_size == 300_000  # named in the spec: not asked for, kept
    assert cli.json("status") == []
    assert not state.job_dir(a).exists() and not state.job_dir(b).exists()
    assert cli.run("status", a, check=False).returncode == 3


def test_remove_checkpoints_deletes_a_named_dir_but_never_the_workdir(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    named = tmp_path / "runs" / "c"
    daemon.start()
    c = _finished(cli, tmp_path, "c", WRITE.format(size=1000), checkpoint_dir=str(named))
    (tmp_path / "code").mkdir()
    d = _finished(cli, tmp_path, "d", "true", workdir="code", checkpoint_dir=".")
    cli.wait_state(c, "succeeded")
    cli.wait_state(d, "succeeded")
    assert cli.json("remove", c, "--checkpoints")["not_removed"] == []
    assert not named.exists()
    kept = cli.run("remove", d, "--checkpoints")
    assert f"kept {tmp_path / 'code'}: it holds the job's workdir" in kept.stdout and (tmp_path / "code").is_dir()
    assert cli.json("status") == []


def test_clean_needs_an_age_or_all(cli: Cli):
    assert cli.run("clean", check=False).returncode == 2
    assert cli.run("clean", "--older-than", "soon", check=False).returncode == 2
    assert "no finished job to remove" in cli.run("clean", "--older-than", "7d").stdout


def test_prune_keeps_the_newest_attempts(tmp_path: Path):
    job_dir = tmp_path / "jobs" / "0123abcd"
    for number in range(1, 6):
        (job_dir / f"attempt-{number}.run").mkdir(parents=True)
        (job_dir / f"attempt-{number}.log").write_text("x")
    (job_dir / "checkpoints").mkdir()
    gone = prune_attempts(job_dir, 5, 2)
    assert sorted(p.name for p in gone) == sorted(f"attempt-{n}.{e}" for n in (1, 2, 3) for e in ("log", "run"))
    assert sorted(p.name for p in job_dir.iterdir()) == [
        "attempt-4.log", "attempt-4.run", "attempt-5.log", "attempt-5.run", "checkpoints"]
    assert prune_attempts(job_dir, 5, 0) == []


def test_keep_attempts_from_the_config_file(tmp_path: Path):
    config = tmp_path / "config.yaml"
    assert keep_attempts(config) == 10
    config.write_text("notify:\n  desktop: true\nkeep_attempts: 3  # per job\n")
    assert keep_attempts(config) == 3
    config.write_text("keep_attempts: many\n")
    assert keep_attempts(config) == 10


def test_named_checkpoint_dir_guards(tmp_path: Path):
    job_dir = tmp_path / "state" / "jobs" / "0123abcd"
    assert named_checkpoint_dir(job_dir, str(job_dir / "checkpoints"), None) == (None, None)
    assert named_checkpoint_dir(job_dir, str(tmp_path / "runs"), str(tmp_path / "code")) == (tmp_path / "runs", None)
    assert named_checkpoint_dir(job_dir, str(tmp_path), str(tmp_path / "code"))[0] is None
    assert named_checkpoint_dir(job_dir, str(Path.home()), None)[1].endswith("it holds your home folder")


def test_doctor_shows_the_state_dir_size(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    assert check_state_size(state).ok is None
    (state.root / "jobs" / "0123abcd").mkdir(parents=True)
    (state.root / "jobs" / "0123abcd" / "attempt-1.log").write_bytes(b"x" * 100_000)
    check = check_state_size(state)
    assert check.ok and "KiB in job dirs" in check.detail and str(state.root) in check.detail


# --- the daemon's side: the `remove` request, with fakes (no processes) -------------------


def _succeeded(world, name: str, **fields) -> str:
    job_id = world.submit(name, **fields)
    plan = world.start(job_id)
    world.job_started(plan)
    Path(world.job(job_id).checkpoint_dir).mkdir(parents=True, exist_ok=True)
    (Path(world.job(job_id).checkpoint_dir) / "w.bin").write_bytes(b"w")
    world.job_ended(plan, exit_code=0, log="done\n")
    world.poll()
    assert world.job(job_id).state.is_terminal
    return job_id


def _remove(world, job_id: str, checkpoints: bool = False) -> None:
    inbox.drop(world.state.inbox, {"kind": "control", "job_id": job_id, "action": "remove",
                                   "requested_at": world.clock.time(), "checkpoints": checkpoints})
    world.intake.ingest_all(world.clock.time())


def test_the_daemon_removes_a_finished_job_and_redoes_a_removal_cut_short(tmp_path: Path):
    world = World.make(tmp_path)
    a = _succeeded(world, "a")
    b = _succeeded(world, "b")
    assert world.state.job_dir(a).is_dir()
    _remove(world, a)
    assert world.job(a) is None and not world.state.job_dir(a).exists()
    assert Path(world.store.job(b).checkpoint_dir).is_dir()
    shutil.rmtree(world.state.job_dir(b))  # as a daemon killed after deleting the files, before the commit leaves it
    _remove(world, b, checkpoints=True)
    assert world.job(b) is None and not (tmp_path / "state" / "ckpt" / "b").exists()
    assert world.store.attempts(b) == [] and world.store.events(b) == []


def test_the_daemon_leaves_a_live_job_and_a_shared_checkpoint_dir(tmp_path: Path):
    world = World.make(tmp_path)
    queued = world.submit("q")
    _remove(world, queued)
    assert world.job(queued).state is JobState.QUEUED and world.events(queued)[-1] == "remove_ignored"
    shared = str(tmp_path / "shared")
    first = _succeeded(world, "s1", checkpoint_dir=shared)
    _succeeded(world, "s2", checkpoint_dir=shared)
    _remove(world, first, checkpoints=True)
    assert world.job(first) is None and (Path(shared) / "w.bin").exists()


def test_an_attempt_start_prunes_the_files_of_attempts_beyond_keep_attempts(tmp_path: Path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("keep_attempts: 2\n")
    monkeypatch.setenv("TRAINSUP_CONFIG", str(config))
    world = World.make(tmp_path)
    job_id = world.submit("preempted")
    for _ in range(4):
        plan = world.start(job_id)
        world.job_started(plan)
        world.job_ended(plan, exit_code=75, log=f"attempt {plan.number}\n")
        world.poll()
        assert world.job(job_id).state is JobState.QUEUED
    world.start(job_id)
    job_dir = world.state.job_dir(job_id)
    assert sorted(p.name for p in job_dir.glob("attempt-*.log")) == ["attempt-4.log"]  # 5 has no log yet
    assert not (job_dir / "attempt-3.run").exists() and (job_dir / "attempt-4.run").exists()
    assert len(world.store.attempts(job_id)) == 5  # the rows and the timeline stay
