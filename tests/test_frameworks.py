"""Scripts written for Lightning, the HF Trainer and a resume guide, supervised as is.

Issue 10, "any training script is supervised right": real daemon, real `trainsup`
command, the scripts in tests/jobs/frameworks/ (none imports trainsup). Each is killed
(SIGKILL), stopped with the daemon, or left with a truncated newest checkpoint, and must
resume from the right file and finish its N steps.

Run time is mostly interpreter starts (importing Lightning or the HF Trainer costs ~7 s of
CPU an attempt), so: the Lightning and HF jobs of the SIGKILL and truncated-checkpoint
tests run at once under one daemon (one thread each, on the 2 cores the jobs' imports are
single-threaded on), checkpoints come every 5 steps of 40, and the test polls files, not
the `trainsup` command, while it waits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec

PY = sys.executable
FRAMEWORKS = JOBS / "frameworks"
STEPS, SAVE_EVERY = 40, 5

pytestmark = pytest.mark.slow


# --- the three scripts and where they keep their checkpoints ----------------------------

def _lightning_steps(checkpoints: Path) -> list[int]:
    """Steps of Lightning's complete step files (written by rename, so never partial)."""
    return [int(m.group(1)) for p in checkpoints.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]


def _hf_steps(checkpoints: Path) -> list[int]:
    """Steps of HF checkpoint-N/ dirs that are complete: trainer_state.json is written last."""
    return [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
            if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").exists()]


def _lightning_spec(tmp_path: Path, name: str, **extra) -> Path:
    pytest.importorskip("lightning", reason="lightning is not installed (pip install -e '.[dev]')")
    return write_spec(
        tmp_path / f"{name}.yaml", name=name,
        command=[PY, str(FRAMEWORKS / "lightning_job.py"), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
                 "--step-delay", "0.03", "--out", str(tmp_path / "out.json")],
        checkpoint_dir="ckpt", env={"OMP_NUM_THREADS": "1"},
        resume={"args": ["--ckpt-path", "{checkpoint}"], "checkpoint": "**/*.ckpt"},
        **extra,
    )


def _hf_spec(tmp_path: Path, name: str, **extra) -> Path:
    pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[dev]')")
    pytest.importorskip("accelerate", reason="accelerate is not installed (the HF Trainer needs it)")
    # No `resume:`: like the HF examples, the script finds its newest checkpoint-N itself.
    return write_spec(
        tmp_path / f"{name}.yaml", name=name,
        command=[PY, str(FRAMEWORKS / "hf_job.py"), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
                 "--step-delay", "0.02", "--out", str(tmp_path / "out.json")],
        checkpoint_dir="ckpt", env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        **extra,
    )


FRAMEWORK_CASES = {"lightning": (_lightning_spec, _lightning_steps), "hf": (_hf_spec, _hf_steps)}


# --- helpers ----------------------------------------------------------------------------

def _logs(cli: Cli, job: str, *extra: str) -> str:
    return cli.run("logs", job, *extra).stdout


def _events(cli: Cli, job: str) -> list[dict]:
    return cli.json("show", job)["events"]


def _started_messages(cli: Cli, job: str) -> list[str]:
    return [e["message"] for e in _events(cli, job) if e["kind"] == "attempt_started"]


def _running_pid(cli: Cli, job: str, attempt: int, timeout: float = 60) -> int:
    """The pid of attempt `attempt` once it runs (not a previous attempt's stale pid)."""
    def running() -> int | None:
        status = cli.job(job)
        if status["state"] == "running" and len(status["attempts"]) == attempt and status.get("pid"):
            return status["pid"]
        return None
    return wait_for(running, timeout, 0.1, f"attempt {attempt} running")


def _kill_job(pid: int) -> None:
    """SIGKILL the job's process group (the monitor starts the job as a group leader)."""
    pgid = os.getpgid(pid)
    assert pgid != os.getpgrp(), "never kill the test's own group"
    os.killpg(pgid, signal.SIGKILL)


def _final(cli: Cli, job: str, out: Path, timeout: float = 120) -> dict:
    """The job's end. Until `out` (written at a normal end) appears, the command (an interpreter
    start each) is asked only once a second: on 2 cores the polling slowed the job's imports."""
    deadline = time.monotonic() + timeout
    ended = ("succeeded", "failed", "cancelled")
    next_ask = 0.0
    while not out.exists() and time.monotonic() < deadline:
        if time.monotonic() >= next_ask:
            if cli.job(job)["state"] in ended:
                break
            next_ask = time.monotonic() + 1.0
        time.sleep(0.05)
    return cli.wait_state(job, *ended, timeout=max(deadline - time.monotonic(), 10))


def _both(scenario) -> None:
    """Runs scenario("lightning") and scenario("hf") at once, re-raising the first failure."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(scenario, framework) for framework in FRAMEWORK_CASES]
        for future in futures:
            future.result()


def _explain(cli: Cli, job: str, daemon: DaemonProcess) -> str:
    """What to print when a test fails: the timeline, the attempts and the daemon's tail."""
    status = cli.job(job)
    lines = [f"state={status['state']} result={status.get('result')}"]
    t0 = status["attempts"][0]["started_at"] if status["attempts"] else 0.0
    lines += [f"  attempt {a['number']} [{a['started_at'] - t0:.1f}s-{(a['ended_at'] or t0) - t0:.1f}s]: "
              f"reason={a['reason']} "
              f"exit={a['exit_code']} signal={a['signal']} before={a['checkpoint_before']} "
              f"after={a['checkpoint_after']} detail={a['detail']}"
              for a in status["attempts"]]
    lines += [f"  {e['kind']}: {e['message']}" for e in _events(cli, job)]
    daemon_log = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
    return "\n".join(lines) + "\n--- daemon log tail ---\n" + daemon_log[-3000:]


def _out(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out.json").read_text())


def _first_step(cli: Cli, job: str, attempt: int) -> int:
    """The first step the script reports in an attempt (it prints `step N` after each)."""
    return int(re.search(r"^step (\d+)", _logs(cli, job, "--attempt", str(attempt)), re.M).group(1))


def _names_checkpoint(message: str, framework: str) -> bool:
    """attempt_started names the checkpoint the attempt will find; with `resume:` also the arguments."""
    if framework == "lightning":
        return ".ckpt" in message and "passing --ckpt-path /" in message
    return re.search(r"checkpoint-\d+", message) is not None


# --- Lightning and HF -------------------------------------------------------------------

def test_three_sigkills_resume_and_finish(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    """Lightning and HF at once, each SIGKILLed three times once it wrote a new checkpoint."""
    cli.run("group", "set", "default", "2")  # both jobs at once, whatever the number of cores
    daemon.start()

    def scenario(framework: str) -> None:
        make_spec, steps_of = FRAMEWORK_CASES[framework]
        work = tmp_path / framework
        work.mkdir()
        spec = make_spec(work, f"{framework}-kill", restart={"initial": "0.2s", "max": "2s", "max_restarts": 5})
        checkpoints = work / "ckpt"
        job = cli.submit(spec)

        killed_at = [0]
        for attempt in (1, 2, 3):
            pid = _running_pid(cli, job, attempt)
            killed_at.append(wait_for(lambda: (s := max(steps_of(checkpoints), default=0)) > killed_at[-1] and s, 60,
                                      0.05, f"a {framework} checkpoint past step {killed_at[-1]} in attempt {attempt}"))
            _kill_job(pid)

        final = _final(cli, job, work / "out.json")
        why = f"[{framework}] " + _explain(cli, job, daemon)
        assert final["state"] == "succeeded", why
        assert "crash loop" not in (final.get("result") or ""), why
        attempts = final["attempts"]
        assert [a["reason"] for a in attempts] == ["crash", "crash", "crash", "succeeded"], why
        assert all(a["signal"] == signal.SIGKILL for a in attempts[:3]), why
        assert _out(work)["global_step"] == STEPS, why
        started = _started_messages(cli, job)
        assert len(started) == 4 and "starting fresh" in started[0], why
        for message in started[1:]:
            assert _names_checkpoint(message, framework), f"{message!r} names no checkpoint\n{why}"
        for before, after in zip(attempts[1:], attempts):
            assert before["checkpoint_before"] == after["checkpoint_after"] is not None, why
        resumed = [line for line in _logs(cli, job).splitlines() if line.startswith("resuming from")]
        assert len(resumed) == 3, f"[{framework}] the script itself says it resumed in attempts 2-4"
        for attempt in (2, 3, 4):
            assert _first_step(cli, job, attempt) > killed_at[attempt - 1], \
                f"[{framework}] attempt {attempt} went on from the checkpoint seen before the kill ({killed_at})"

    _both(scenario)


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_daemon_stop_interrupts_then_resumes(framework: str, cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    make_spec, steps_of = FRAMEWORK_CASES[framework]
    spec = make_spec(tmp_path, f"{framework}-stop", grace_period="20s", restart={"max_restarts": 0})
    checkpoints = tmp_path / "ckpt"
    daemon.start()
    job = cli.submit(spec)
    _running_pid(cli, job, 1)
    wait_for(lambda: max(steps_of(checkpoints), default=0) >= 2 * SAVE_EVERY, 60, 0.05, "two checkpoints")

    assert daemon.stop(timeout=60) == 0
    stopped = cli.job(job)
    why = _explain(cli, job, daemon)
    assert stopped["state"] == "queued", why
    [first] = stopped["attempts"]
    assert first["reason"] == "interrupted", why
    if framework == "lightning":
        # Lightning turns SIGTERM into SystemExit at the next step: exit 0, no checkpoint.
        assert first["exit_code"] == 0 and first["signal"] is None, why
    else:
        # The HF Trainer leaves SIGTERM alone (its JIT checkpoint is opt-in): killed by it.
        assert first["signal"] == signal.SIGTERM, why
    assert not (tmp_path / "out.json").exists(), "it did not run to the end"

    daemon.start()
    final = _final(cli, job, tmp_path / "out.json")
    why = _explain(cli, job, daemon)
    assert final["state"] == "succeeded", why
    assert [a["reason"] for a in final["attempts"]] == ["interrupted", "succeeded"], why
    assert _out(tmp_path)["global_step"] == STEPS
    assert _names_checkpoint(_started_messages(cli, job)[1], framework), why
    assert _first_step(cli, job, 2) > 2 * SAVE_EVERY, "resumed from a checkpoint written before the stop"


def test_truncated_newest_checkpoint_is_quarantined(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    """Lightning and HF at once: each killed, its newest checkpoint truncated in the backoff."""
    cli.run("group", "set", "default", "2")  # both jobs at once, whatever the number of cores
    daemon.start()

    def scenario(framework: str) -> None:
        make_spec, steps_of = FRAMEWORK_CASES[framework]
        work = tmp_path / framework
        work.mkdir()
        # A 2 s backoff (no jitter) leaves time to spoil the newest checkpoint between attempts
        # (1.5 s did alone; two jobs importing at once slow the `trainsup status` that sees it).
        spec = make_spec(work, f"{framework}-bad",
                         restart={"initial": "2s", "max": "2s", "factor": 1, "jitter": 0, "max_restarts": 5})
        checkpoints = work / "ckpt"
        job = cli.submit(spec)
        pid = _running_pid(cli, job, 1)
        wait_for(lambda: max(steps_of(checkpoints), default=0) >= 2 * SAVE_EVERY, 60, 0.05,
                 f"two {framework} checkpoints")
        _kill_job(pid)
        wait_for(lambda: cli.job(job)["state"] == "backoff", 30, 0.02, f"{framework} in backoff")

        newest_step = max(steps_of(checkpoints))
        if framework == "lightning":
            spoiled = max((p for p in checkpoints.glob("*.ckpt")), key=lambda p: p.stat().st_mtime_ns)
            quarantined_name = spoiled.name
        else:
            spoiled = checkpoints / f"checkpoint-{newest_step}" / "model.safetensors"
            quarantined_name = spoiled.parent.name
        os.truncate(spoiled, 100)
        spoiled_at = time.time()

        final = _final(cli, job, work / "out.json")
        why = f"[{framework}] " + _explain(cli, job, daemon)
        attempts = final["attempts"]
        assert attempts[1]["started_at"] > spoiled_at, f"[{framework}] spoiled before attempt 2 started\n{why}"
        assert final["state"] == "succeeded", why
        events = _events(cli, job)
        quarantined = [e["message"] for e in events if e["kind"] == "quarantined"]
        assert len(quarantined) == 1 and quarantined_name in quarantined[0], why
        moved = [p for p in (checkpoints / "quarantine").rglob(spoiled.name) if p.stat().st_size == 100]
        assert moved, f"the truncated {spoiled.name} is under quarantine/\n{why}"
        assert len(attempts) == 4, why  # killed, two failed loads, then the previous checkpoint
        assert [a["reason"] for a in attempts[:3]] == ["crash", "crash", "crash"], why
        fallback = attempts[3]["checkpoint_before"]
        assert fallback is not None and fallback != quarantined_name, why
        last_started = _started_messages(cli, job)[-1]
        assert _names_checkpoint(last_started, framework) and quarantined_name not in last_started, why
        assert fallback in last_started, why
        if framework == "hf":
            assert f"checkpoint-{newest_step - SAVE_EVERY}" in _logs(cli, job, "--attempt", "4"), why
        assert _out(work)["global_step"] == STEPS, why

    _both(scenario)


# --- the resume-guide script (USERS.md story 1) -----------------------------------------

EPOCHS, STEPS_PER_EPOCH = 8, 10


def _guide_spec(tmp_path: Path, name: str, *extra_args: str, **extra) -> Path:
    pytest.importorskip("torch", reason="torch is not installed")
    return write_spec(
        tmp_path / f"{name}.yaml", name=name,
        command=[PY, str(FRAMEWORKS / "guide_job.py"), "--epochs", str(EPOCHS), "--steps-per-epoch",
                 str(STEPS_PER_EPOCH), "--step-delay", "0.03", "--out", str(tmp_path / "out.json"), *extra_args],
        checkpoint_dir="ckpt", env={"OMP_NUM_THREADS": "1"},
        resume={"args": ["--resume", "{checkpoint}"], "checkpoint": "last_model.pth"},
        **extra,
    )


def _wait_log(cli: Cli, job: str, text: str, timeout: float = 60) -> str:
    return wait_for(lambda: text in (log := _logs(cli, job)) and log, timeout, 0.1, repr(text))


def test_guide_script_resumes_from_its_file(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = _guide_spec(tmp_path, "guide", restart={"initial": "0.2s"})
    daemon.start()
    job = cli.submit(spec)
    pid = _running_pid(cli, job, 1)
    _wait_log(cli, job, "epoch 3 done")
    _kill_job(pid)

    final = _final(cli, job, tmp_path / "out.json")
    why = _explain(cli, job, daemon)
    assert final["state"] == "succeeded", why
    assert [a["reason"] for a in final["attempts"]] == ["crash", "succeeded"], why
    first, second = _logs(cli, job, "--attempt", "1"), _logs(cli, job, "--attempt", "2")
    assert "starting fresh at epoch 1" in first
    last_done = max(int(e) for e in re.findall(r"epoch (\d+) done", first))
    resumed = re.search(r"resumed from (\S+) at epoch (\d+)", second)
    assert resumed, second
    assert resumed.group(1) == str(tmp_path / "ckpt" / "last_model.pth"), "the absolute path of its file"
    # SIGKILL may land between the save and the line that reports it.
    assert int(resumed.group(2)) in (last_done + 1, last_done + 2), (last_done, resumed.group(0))
    assert f"epoch {EPOCHS} done" in second
    assert _out(tmp_path) == {"global_step": EPOCHS * STEPS_PER_EPOCH, "epoch": EPOCHS}
    assert "last_model.pth" in _started_messages(cli, job)[1], why


def test_guide_script_killed_while_saving_fails_with_one_sentence(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = _guide_spec(tmp_path, "guide-torn", "--slow-save-at-epoch", "3",
                       restart={"initial": "0.2s", "max_restarts": 5})
    checkpoints = tmp_path / "ckpt"
    daemon.start()
    job = cli.submit(spec)
    pid = _running_pid(cli, job, 1)
    _wait_log(cli, job, "saving epoch 3 slowly")
    _kill_job(pid)
    assert (checkpoints / "last_model.pth").stat().st_size == 64, "a torn, truncated file"

    final = _final(cli, job, tmp_path / "out.json")
    why = _explain(cli, job, daemon)
    assert final["state"] == "failed", why
    result = final["result"] or ""
    assert "last_model.pth" in result and "no older checkpoint" in result, why
    assert "quarantine" in result, why
    assert "PytorchStreamReader" in result or "central directory" in result, f"the error line from the log\n{why}"
    assert len(final["attempts"]) <= 3, f"it did not spend max_restarts\n{why}"
    assert not (checkpoints / "last_model.pth").exists()
    moved = list((checkpoints / "quarantine").rglob("last_model.pth*"))
    assert len(moved) == 1 and moved[0].stat().st_size == 64, why
    assert "quarantined" in [e["kind"] for e in _events(cli, job)], why
    assert "crash loop" not in result, why
