"""trainsup.integrations.accelerate: power-safe, verified save_state/load_state, exact resume, graceful stop.

Unit tests use a real `Accelerator` on CPU with a tiny model in this process; the crash-point
test drives the save through the trainer's power-loss model of the file system; the others
run jobs/accelerate/train.py, outside the daemon (Ctrl+C, rerun) and under the real daemon
(slow: three SIGKILLs, one during a save, and a daemon stop), each ending with weights and
optimizer state `torch.equal` to an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import Cli, DaemonProcess, wait_for, write_spec
from test_integration_hf import _explain, _kill_job, _log, _power_loss_module, _run_dir, _running_pid, _same, _steps
from trainsup.contracts import read_heartbeats, read_json
from trainsup.manifest import verify

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
JOB = REPO / "jobs" / "accelerate" / "train.py"
ENV = {"OMP_NUM_THREADS": "1"}


def _needs_accelerate() -> None:
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install -e '.[dev]')")


# --- without accelerate ------------------------------------------------------------------------------


def test_importable_without_accelerate(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['accelerate'] = None\n"
        "import trainsup.integrations.accelerate as acc\n"
        "print([m for m in ('torch', 'transformers') if m in sys.modules])\n"
        f"print(acc.newest_verified({str(tmp_path)!r}, environ={{}}))\n"
        "print(acc.batch_from_env(8, environ={'TRAINSUP_BATCH_SIZE': '4'}), acc.data_position(70, 32))\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "None", "Batch(micro=4, grad_accum=2) (2, 6)"]


# --- a real Accelerator in this process ------------------------------------------------------------------


def _setup(seed: int = 0) -> tuple[Any, Any, Any]:
    _needs_accelerate()
    import torch
    from accelerate import Accelerator

    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _train_step(model: Any, optimizer: Any, accelerator: Any) -> None:
    import torch

    loss = model(torch.randn(8, 4)).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()


def test_save_state_seals_renames_and_load_state_falls_back(tmp_path: Path) -> None:
    import torch

    from trainsup.integrations.accelerate import load_state, save_state

    accelerator, model, optimizer = _setup()
    out = tmp_path / "out"
    weights = {}
    for step in (1, 2, 3):
        _train_step(model, optimizer, accelerator)
        path = save_state(accelerator, out, step, meta={"metrics": {"loss": 0.5}})
        weights[step] = model.weight.detach().clone()
        manifest = verify(path)
        assert manifest.step == step and manifest.metrics == {"loss": 0.5}
        assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(manifest.files)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]

    os.truncate(out / "checkpoint-3" / "optimizer.bin", 10)               # torn
    shutil.copytree(out / "checkpoint-1", out / "checkpoint-4")
    (out / "checkpoint-4" / "manifest.json").unlink()                      # never sealed
    shutil.copytree(out / "checkpoint-1", out / ".tmp-checkpoint-5-4242")  # a save cut short
    run = tmp_path / "run"
    fresh, model2, _ = _setup(seed=1)
    assert not torch.equal(model2.weight, weights[2])
    assert load_state(fresh, out, environ={"TRAINSUP_RUN_DIR": str(run), "TRAINSUP_ATTEMPT": "2"}) == 2
    assert torch.equal(model2.weight, weights[2])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", "quarantine"]
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    record = read_json(run / "resume.json")
    assert (record["checkpoint"], record["step"], record["attempt"]) == ("checkpoint-2", 2, 2)
    assert [s["checkpoint"] for s in record["skipped"]] == ["checkpoint-4", "checkpoint-3"]
    assert "optimizer.bin has 10 bytes" in record["skipped"][1]["why"]

    # saving a step that already has a verified checkpoint keeps it; a broken one is replaced
    before = (out / "checkpoint-2" / "manifest.json").read_bytes()
    save_state(fresh, out, 2)
    assert (out / "checkpoint-2" / "manifest.json").read_bytes() == before
    os.truncate(out / "checkpoint-2" / "model.safetensors", 5)
    save_state(fresh, out, 2)
    assert verify(out / "checkpoint-2").step == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert load_state(fresh, tmp_path / "empty", environ={}) is None


# --- the save under a power cut at each step ---------------------------------------------------------------

FILES = {"model.safetensors": b"m" * 3000, "optimizer.bin": b"o" * 5000, "random_states_0.pkl": b"r" * 300}


class _FakeAccelerator:
    """accelerate's save_state as far as the file system sees it: a dir and three files, no fsync."""

    is_main_process = True
    num_processes = 1

    def __init__(self, model: Any) -> None:
        self.model = model

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, output_dir: str) -> None:
        folder = Path(output_dir)
        self.model.mkdir(folder)
        for name, data in FILES.items():
            self.model.write_file(folder / name, lambda file, data=data: file.write(data))


def _crash_failures(tmp: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """checkpoint-10 is sealed; the save of checkpoint-20 is cut after each of its operations,
    in both power-loss models: `newest_verified` must pick 10 or 20, never nothing, 20 once
    `save_state` returned, and no temp dir may survive it."""
    power = _power_loss_module()
    from trainsup.integrations.accelerate import newest_verified, save_state
    from trainsup.integrations.hf import seal_checkpoint

    base = tmp / "base"
    (base / "checkpoint-10").mkdir(parents=True)
    for name, data in FILES.items():
        (base / "checkpoint-10" / name).write_bytes(data[:-1] + b"1")
    seal_checkpoint(base / "checkpoint-10", 10)

    counting = tmp / "count"
    shutil.copytree(base, counting)
    counter = power.PowerLossModel(counting, skip=skip)
    save_state(_FakeAccelerator(counter), counting, 20, ops=counter)
    total = len(counter.done)
    assert counter.done[-2:] == ["rename", "fsync_dir"]
    failures = []
    for k in range(1, total + 1):
        for mode in ("strict", "metadata"):
            root = tmp / f"run-{k}-{mode}"
            shutil.copytree(base, root)
            model = power.PowerLossModel(root, crash_after=k, skip=skip)
            with pytest.raises(power.SimulatedCrash):
                save_state(_FakeAccelerator(model), root, 20, ops=model)
            survived = tmp / f"after-{k}-{mode}"
            model.materialize(survived, mode)
            where = f"crash after {k} ({counter.done[k - 1]}, {mode})"
            chosen = newest_verified(survived, environ={})
            step = chosen[0] if chosen else None
            if step not in (10, 20):
                failures.append(f"{where}: resumes {step}")
            elif k == total and step != 20:
                failures.append(f"power lost after save_state returned ({mode}): resumes {step}")
            elif step == 20:
                assert (survived / "checkpoint-20" / "optimizer.bin").read_bytes() == FILES["optimizer.bin"]
            if any(p.name.startswith(".tmp-") for p in survived.iterdir()):
                failures.append(f"{where}: a temp dir is left after the resume")
    return failures


def test_every_crash_point_of_save_state_leaves_old_or_new(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert _crash_failures(tmp_path) == []


@pytest.mark.parametrize("removed", ["fsync_file", "fsync_dir"])
def test_harness_catches_a_save_without_fsync(tmp_path: Path, removed: str) -> None:
    pytest.importorskip("torch")
    assert _crash_failures(tmp_path, skip=frozenset({removed})), f"the harness did not notice a save without {removed}"


# --- the example job: exact resume, Ctrl+C ------------------------------------------------------------------

STEPS, SAVE_EVERY, SLOW_AT = 90, 10, 20  # 32 batches an epoch: the kills land in epochs 0-2


def _command(final: Path, *extra: str) -> list[str]:
    return [PY, str(JOB), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--step-delay", "0.04",
            "--final", str(final), *extra]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), **extra}
    for name in ("TRAINSUP_RUN_DIR", "TRAINSUP_HEARTBEAT", "TRAINSUP_CHECKPOINT_DIR", "TRAINSUP_BATCH_SIZE"):
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same script, uninterrupted, outside the daemon."""
    _needs_accelerate()
    import torch

    tmp = tmp_path_factory.mktemp("accelerate-reference")
    result = subprocess.run(_command(tmp / "final.pt", "--output-dir", str(tmp / "ckpt"), "--step-delay", "0"),
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp / "final.pt", weights_only=True)


def _assert_equal_to(reference: dict, final_path: Path) -> None:
    import torch

    final = torch.load(final_path, weights_only=True)
    assert final["global_step"] == reference["global_step"] == STEPS
    for part in ("model", "optimizer", "scheduler"):
        _same(final[part], reference[part], part)


def test_ctrl_c_saves_exits_75_and_the_rerun_resumes_exactly(reference: dict, tmp_path: Path) -> None:
    """Stopped mid-epoch, resumed with `epoch_batches`: the same batches, dropout and optimizer steps."""
    final = tmp_path / "final.pt"
    env = _clean_env(TRAINSUP_RUN_DIR=str(tmp_path / "run"), TRAINSUP_HEARTBEAT=str(tmp_path / "run" / "beat"))
    command = _command(final, "--output-dir", str(tmp_path / "out"))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "step 45":  # epoch 1, batch 13
            proc.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 75, output[-3000:]
    exit_info = read_json(tmp_path / "run" / "exit.json")
    stopped_at = exit_info["step"]
    assert 45 <= stopped_at < 50 and exit_info["reason"] == "preempted", exit_info
    assert exit_info["detail"] == f"SIGINT: checkpoint checkpoint-{stopped_at} saved"
    assert verify(tmp_path / "out" / f"checkpoint-{stopped_at}").step == stopped_at
    assert not final.exists()

    rerun = subprocess.run([*command, "--step-delay", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint-{stopped_at} (verified)" in rerun.stderr
    assert _steps(rerun.stdout)[0] == stopped_at + 1
    assert read_json(tmp_path / "run" / "exit.json")["reason"] == "finished"
    assert read_json(tmp_path / "run" / "resume.json")["step"] == stopped_at
    [beat] = read_heartbeats(tmp_path / "run" / "beat")
    assert (beat.step, beat.total_steps) == (STEPS, STEPS) and beat.loss is not None
    _assert_equal_to(reference, final)


# --- under the daemon ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_sigkills_one_during_a_save_finish_equal(reference: dict, cli: Cli, daemon: DaemonProcess,
                                                     tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checkpoints = tmp_path / "ckpt"
    final = tmp_path / "final.pt"
    spec = write_spec(tmp_path / "acc.yaml", name="accelerate-sealed", checkpoint_dir="ckpt", env=ENV,
                      command=_command(final, "--slow-save-at", str(SLOW_AT),
                                       "--slow-marker", str(tmp_path / "slow-done")),
                      restart={"initial": "0.2s", "max": "1s", "max_restarts": 6})
    daemon.start()
    job = cli.submit(spec)

    # 1: during the save of checkpoint-20, after accelerate wrote it and before trainsup sealed it
    pid = _running_pid(cli, job, 1)
    wait_for(lambda: f"saving checkpoint-{SLOW_AT} slowly" in _log(tmp_path, job, 1), 60, 0.02, "the slow save")
    [temp] = [p for p in checkpoints.iterdir() if p.name.startswith(f".tmp-checkpoint-{SLOW_AT}-")]
    assert (temp / "optimizer.bin").exists() and not (temp / "manifest.json").exists()
    _kill_job(pid)
    # 2 and 3: at a random step of the attempt, between 1 and 25 steps after it started training
    kills = []
    for attempt in (2, 3):
        pid = _running_pid(cli, job, attempt)
        after = rng.randint(1, 25)
        at = wait_for(lambda: (s := _steps(_log(tmp_path, job, attempt))) and len(s) >= after and s[-1],
                      60, 0.01, f"{after} steps in attempt {attempt}")
        _kill_job(pid)
        kills.append(at)

    status = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=180)
    why = f"seed {seed}, kills at the save of {SLOW_AT} then near steps {kills}\n" + _explain(cli, job, tmp_path)
    assert status["state"] == "succeeded", why
    attempts = status["attempts"]
    assert [a["reason"] for a in attempts] == ["crash", "crash", "crash", "succeeded"], why
    assert all(a["signal"] == signal.SIGKILL for a in attempts[:3]), why
    second = _log(tmp_path, job, 2)
    assert f"removing {temp.name}, left by a save that was cut short" in second, why
    assert f"resuming from {checkpoints / f'checkpoint-{SLOW_AT - SAVE_EVERY}'}" in second, why
    for number in (3, 4):
        first = _steps(_log(tmp_path, job, number))[0]
        previous_steps = _steps(_log(tmp_path, job, number - 1))
        assert first % SAVE_EVERY == 1 and first <= max(previous_steps) + 1, why
    for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY):
        assert verify(checkpoints / f"checkpoint-{step}").step == step, why
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")], why
    assert read_json(_run_dir(tmp_path, job, 4) / "exit.json")["reason"] == "finished", why
    beats = read_heartbeats(_run_dir(tmp_path, job, 4) / "heartbeat")
    assert beats and beats[0].step == STEPS and beats[0].total_steps == STEPS, why
    _assert_equal_to(reference, final)


@pytest.mark.slow
def test_daemon_stop_saves_at_the_stop_and_resumes_with_no_step_lost(reference: dict, cli: Cli,
                                                                     daemon: DaemonProcess, tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    final = tmp_path / "final.pt"
    spec = write_spec(tmp_path / "acc.yaml", name="accelerate-stop", checkpoint_dir="ckpt", env=ENV,
                      grace_period="30s", command=_command(final), restart={"max_restarts": 0})
    daemon.start()
    job = cli.submit(spec)
    _running_pid(cli, job, 1)
    stop_after = random.randint(SAVE_EVERY + 3, 2 * SAVE_EVERY + 7)  # usually between two saves
    wait_for(lambda: len(_steps(_log(tmp_path, job, 1))) >= stop_after, 60, 0.01, f"{stop_after} steps")

    assert daemon.stop(timeout=60) == 0
    stopped = cli.job(job)
    why = _explain(cli, job, tmp_path)
    assert stopped["state"] == "queued", why
    [first] = stopped["attempts"]
    assert first["reason"] == "interrupted" and first["exit_code"] == 75 and first["signal"] is None, why
    log = _log(tmp_path, job, 1)
    assert log.count("SIGTERM received") == 1, why
    last_trained = _steps(log)[-1]
    exit_info = read_json(_run_dir(tmp_path, job, 1) / "exit.json")
    assert exit_info == {"reason": "preempted", "step": last_trained,
                         "detail": f"SIGTERM: checkpoint checkpoint-{last_trained} saved"}, why
    assert verify(checkpoints / f"checkpoint-{last_trained}").step == last_trained, why
    assert not final.exists(), "it did not run to the end"

    daemon.start()
    status = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=120)
    why = _explain(cli, job, tmp_path)
    assert status["state"] == "succeeded", why
    assert [a["reason"] for a in status["attempts"]] == ["interrupted", "succeeded"], why
    second = _log(tmp_path, job, 2)
    assert f"resuming from {checkpoints / f'checkpoint-{last_trained}'}" in second, why
    assert _steps(second)[0] == last_trained + 1, f"0 steps lost and none trained twice\n{why}"
    resumed = [e["message"] for e in cli.json("show", job)["events"] if e["kind"] == "resumed"]
    assert resumed and f"resumed from checkpoint-{last_trained}" in resumed[-1], why
    _assert_equal_to(reference, final)


# --- two processes (gloo on CPU), under the daemon -----------------------------------------------------------

STEPS_2P, SLOW_AT_2P = 40, 20  # 2 processes: 16 batches a process an epoch, a save every 10 steps
LAUNCH_2P = [str(Path(PY).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
             "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(JOB),
             "--steps", str(STEPS_2P), "--save-every", str(SAVE_EVERY)]


GLOO_EXIT_SCRIPT = """
import atexit, sys
import torch.distributed as dist
from accelerate import Accelerator
from trainsup.integrations.accelerate import Checkpoints

# registered first, so it runs last: after trainsup's own exit hook
atexit.register(lambda: print("group alive at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
Checkpoints(Accelerator(cpu=True), sys.argv[2], handle_signals=False)
Checkpoints(Accelerator(cpu=True), sys.argv[2], handle_signals=False)  # registered once
"""


def test_the_gloo_group_is_destroyed_before_interpreter_exit(tmp_path: Path) -> None:
    """A gloo process reaching interpreter finalization with its group alive can abort there
    (SIGABRT: 3 in 10 exits of a 2-process torchrun script here): a finished run or a stop's
    exit 75 would read as a crash. With the adapter in use the group is gone before then."""
    _needs_accelerate()
    result = subprocess.run([PY, "-c", GLOO_EXIT_SCRIPT, str(tmp_path / "store"), str(tmp_path / "ckpt")],
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "group alive at exit: False", result.stdout


@pytest.fixture(scope="module")
def reference_2p(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same script, uninterrupted, on 2 processes, outside the daemon."""
    _needs_accelerate()
    import torch

    tmp = tmp_path_factory.mktemp("accelerate-reference-2p")
    result = subprocess.run([*LAUNCH_2P, "--step-delay", "0", "--output-dir", str(tmp / "ckpt"),
                             "--final", str(tmp / "final.pt")],
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp / "final.pt", weights_only=True)


@pytest.mark.slow
def test_two_processes_main_killed_in_a_save_a_worker_killed_and_stopped_finish_equal(
        reference_2p: dict, cli: Cli, daemon: DaemonProcess, tmp_path: Path) -> None:
    """`accelerate launch` with 2 processes: the main process SIGKILLed after accelerate wrote
    checkpoint-20 and before it was sealed; process 1 SIGKILLed at a random step; process 1
    sent SIGTERM from outside (both save and exit 75, the launcher exits 1: read as preempted).
    Every checkpoint is written once, sealed by the main process, loaded by both; the final
    state is `torch.equal` to an uninterrupted 2-process run."""
    import torch

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checkpoints, final = tmp_path / "ckpt", tmp_path / "final.pt"
    spec = write_spec(tmp_path / "acc2.yaml", name="accelerate-2p", checkpoint_dir="ckpt", env=ENV,
                      grace_period="30s",
                      command=[*LAUNCH_2P, "--step-delay", "0.05", "--final", str(final), "--slow-save-at",
                               str(SLOW_AT_2P), "--slow-marker", str(tmp_path / "slow-done")],
                      restart={"initial": "0.2s", "max": "1s", "jitter": 0, "max_restarts": 5, "crash_loop": 0})
    daemon.start()
    job = cli.submit(spec)
    notes = [f"seed {seed}"]

    def worker_pid(attempt: int) -> int:
        beat = read_json(_run_dir(tmp_path, job, attempt) / "heartbeat" / "rank-1.json")
        return int(beat["pid"])

    # 1: the main process, inside the save of checkpoint-20 (written, not sealed)
    slow = wait_for(lambda: re.search(rf"saving checkpoint-{SLOW_AT_2P} slowly \(main process, pid (\d+)\)",
                                      _log(tmp_path, job, 1)), 90, 0.02, "the slow save")
    [temp] = [p for p in checkpoints.iterdir() if p.name.startswith(f".tmp-checkpoint-{SLOW_AT_2P}-")]
    # process 1 writes its own random states beside the main process's stalled save: wait for them
    wait_for(lambda: {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in temp.iterdir()},
             30, 0.02, "both processes' random states in the unsealed checkpoint")
    assert not (temp / "manifest.json").exists()
    os.kill(int(slow.group(1)), signal.SIGKILL)
    # 2: process 1 SIGKILLed; 3: process 1 sent SIGTERM — each a seeded number of steps after the start
    for attempt, sig in ((2, signal.SIGKILL), (3, signal.SIGTERM)):
        after = rng.randint(1, 8)
        at = wait_for(lambda: (s := _steps(_log(tmp_path, job, attempt))) and len(s) >= after and s[-1],
                      90, 0.02, f"{after} steps in attempt {attempt}")
        os.kill(worker_pid(attempt), sig)
        notes.append(f"attempt {attempt}: process 1 sent {sig.name} after step {at}")

    status = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=120)
    why = "; ".join(notes) + "\n" + _explain(cli, job, tmp_path)
    attempts = status["attempts"]
    assert status["state"] == "succeeded", why
    assert [a["reason"] for a in attempts] == ["crash", "crash", "preempted", "succeeded"], why
    assert attempts[2]["exit_code"] == 1, f"the launcher's own status after its workers exited 75\n{why}"
    second = _log(tmp_path, job, 2)
    assert f"removing {temp.name}, left by a save that was cut short" in second, why
    for number in (2, 3, 4):  # the main process verifies and chooses, the other loads the same one
        log = _log(tmp_path, job, number)
        [chosen] = re.findall(r"resuming from (checkpoint-\d+) \(verified\)", log)
        assert f"resuming from {chosen} (verified by the main process)" in log, why
        assert log.count("resuming from checkpoint-") == 2, why
    stopped = read_json(_run_dir(tmp_path, job, 3) / "exit.json")
    assert stopped["reason"] == "preempted" and stopped["detail"] == \
        f"a stop on another process: checkpoint checkpoint-{stopped['step']} saved", why
    assert _log(tmp_path, job, 3).count("exit code 75 asks to be resumed") == 2, why
    assert _steps(_log(tmp_path, job, 4))[0] == stopped["step"] + 1, f"0 steps lost\n{why}"
    for step in range(SAVE_EVERY, STEPS_2P + 1, SAVE_EVERY):
        sealed = verify(checkpoints / f"checkpoint-{step}")
        assert {"model.safetensors", "random_states_0.pkl", "random_states_1.pkl"} <= set(sealed.files), why
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")], why
    assert [b.rank for b in read_heartbeats(_run_dir(tmp_path, job, 4) / "heartbeat")] == [0, 1], why
    final_state = torch.load(final, weights_only=True)
    assert final_state["global_step"] == STEPS_2P
    for part in ("model", "optimizer", "scheduler"):
        _same(final_state[part], reference_2p[part], part)
