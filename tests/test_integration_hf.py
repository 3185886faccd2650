"""trainsup.integrations.hf: the HF Trainer with sealed checkpoints, verified resume and a graceful stop.

Unit tests run a tiny Trainer in this process (BERT from a config, CPU, no download); the
slow ones run tests/jobs/frameworks/hf_trainsup_job.py under the real daemon: three
SIGKILLs (one while a checkpoint is being saved) and a daemon stop, each finishing with
weights and optimizer state `torch.equal` to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec
from trainsup.batch import BatchError
from trainsup.contracts import read_heartbeats, read_json
from trainsup.manifest import digest_file, read_manifest, verify

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
JOB = JOBS / "frameworks" / "hf_trainsup_job.py"


# --- without transformers ---------------------------------------------------------------------


def test_importable_without_transformers(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None\n"
        "import trainsup.integrations, trainsup.integrations.hf as hf\n"
        "from types import SimpleNamespace\n"
        f"print(hf.resume_checkpoint({str(tmp_path)!r}))\n"
        "args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=1)\n"
        "print(hf.apply_batch(args, environ={'TRAINSUP_BATCH_SIZE': '4'}), args.gradient_accumulation_steps)\n"
        "try:\n    hf.TrainsupCallback()\nexcept ImportError as exc:\n    print('ImportError', exc)\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "None"
    assert lines[1] == "Batch(micro=4, grad_accum=2) 2"
    assert lines[2].startswith("ImportError TrainsupCallback needs transformers"), lines


def test_the_package_imports_no_framework() -> None:
    code = ("import sys, trainsup.integrations\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'accelerate') if m in sys.modules))")
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


# --- apply_batch -------------------------------------------------------------------------------


def test_apply_batch_sets_the_training_arguments() -> None:
    from trainsup.integrations.hf import apply_batch

    args = SimpleNamespace(per_device_train_batch_size=32, gradient_accumulation_steps=2)
    batch = apply_batch(args, environ={"TRAINSUP_BATCH_SIZE": "16", "TRAINSUP_GLOBAL_BATCH_SIZE": "64"})
    assert (batch.micro, batch.grad_accum) == (16, 4)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 4)
    untouched = SimpleNamespace(per_device_train_batch_size=32, gradient_accumulation_steps=2)
    apply_batch(untouched, environ={})
    assert (untouched.per_device_train_batch_size, untouched.gradient_accumulation_steps) == (32, 2)
    with pytest.raises(BatchError):
        apply_batch(SimpleNamespace(per_device_train_batch_size=32, gradient_accumulation_steps=1),
                    environ={"TRAINSUP_BATCH_SIZE": "5"})


def test_apply_batch_on_real_training_arguments(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from trainsup.integrations.hf import apply_batch

    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                          gradient_accumulation_steps=1, use_cpu=True, report_to=[])
    apply_batch(args, environ={"TRAINSUP_BATCH_SIZE": "2", "TRAINSUP_GRAD_ACCUM": "4"})
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.train_batch_size) == (2, 4, 2)


# --- a tiny Trainer in this process ----------------------------------------------------------------


def _trainer(output_dir: Path, steps: int, save_every: int, callbacks: list, seed: int = 0) -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    class Synthetic(torch.utils.data.Dataset):
        def __init__(self) -> None:
            generator = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(2, 64, (64, 8), generator=generator)
            self.labels = (self.ids == 7).any(dim=1).long()

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "labels": self.labels[i]}

    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, save_strategy="steps", save_steps=save_every,
        per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], use_cpu=True, logging_steps=1,
        dataloader_num_workers=0, seed=seed, disable_tqdm=True,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=Synthetic(), callbacks=callbacks)


def _callback(tmp_path: Path, **kwargs: Any) -> Any:
    pytest.importorskip("transformers")
    from trainsup.integrations.hf import TrainsupCallback

    environ = {"TRAINSUP_RUN_DIR": str(tmp_path / "run"), "TRAINSUP_HEARTBEAT": str(tmp_path / "run" / "heartbeat")}
    return TrainsupCallback(environ=environ, **kwargs)


@pytest.fixture
def hf_log(caplog: pytest.LogCaptureFixture) -> Any:
    logger = logging.getLogger("trainsup.integrations")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_on_save_seals_every_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    callback = _callback(tmp_path, handle_signals=False)
    _trainer(out, steps=6, save_every=3, callbacks=[callback]).train()
    for step in (3, 6):
        checkpoint = out / f"checkpoint-{step}"
        manifest = verify(checkpoint)
        listed = sorted(manifest.files)
        on_disk = sorted(p.name for p in checkpoint.iterdir() if p.name != "manifest.json")
        assert listed == on_disk and {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(listed)
        for name, digest in manifest.files.items():
            assert digest == digest_file(checkpoint / name)
        assert manifest.step == step and manifest.batch["micro"] == 8 and "loss" in manifest.metrics
    assert read_json(tmp_path / "run" / "exit.json")["reason"] == "finished"
    [beat] = read_heartbeats(tmp_path / "run" / "heartbeat")
    assert (beat.step, beat.total_steps) == (6, 6) and beat.loss is not None
    assert callback.last_sealed == out / "checkpoint-6"


def test_sigterm_saves_at_the_next_step_and_exits_75(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")

    class Kill(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "out"
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        _trainer(out, steps=20, save_every=10, callbacks=[Kill(), _callback(tmp_path)]).train()
    assert exited.value.code == 75
    assert signal.getsignal(signal.SIGTERM) is previous, "the handlers are put back"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4"]
    assert verify(out / "checkpoint-4").step == 4
    exit_info = read_json(tmp_path / "run" / "exit.json")
    assert exit_info == {"reason": "preempted", "step": 4, "detail": "SIGTERM: checkpoint checkpoint-4 saved"}
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    control = state["stateful_callbacks"]["TrainerControl"]["args"]
    assert control["should_training_stop"] is False, "a resume that restores callback state must not stop at once"

    from trainsup.integrations.hf import resume_checkpoint

    trainer = _trainer(out, steps=20, save_every=10, callbacks=[_callback(tmp_path)])
    trainer.train(resume_from_checkpoint=resume_checkpoint(out))
    assert trainer.state.global_step == 20
    assert read_json(tmp_path / "run" / "exit.json")["reason"] == "finished"


def test_resume_checkpoint_sets_aside_broken_and_unsealed_newer_ones(tmp_path: Path, hf_log: Any) -> None:
    from trainsup.integrations.hf import resume_checkpoint

    out = tmp_path / "out"
    _trainer(out, steps=8, save_every=2, callbacks=[_callback(tmp_path, handle_signals=False)]).train()
    (out / "checkpoint-8" / "manifest.json").unlink()  # killed between HF's write and the seal
    os.truncate(out / "checkpoint-6" / "optimizer.pt", 100)  # torn
    os.truncate(out / "checkpoint-2" / "optimizer.pt", 100)  # older than the one chosen: left alone
    environ = {"TRAINSUP_RUN_DIR": str(tmp_path / "run"), "TRAINSUP_ATTEMPT": "3"}
    assert resume_checkpoint(out, environ=environ) == str(out / "checkpoint-4")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4", "quarantine"]
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert (out / "quarantine" / "checkpoint-6" / "optimizer.pt").stat().st_size == 100, "moved, not deleted"
    lines = [r.getMessage() for r in hf_log.records if "not usable" in r.getMessage()]
    assert lines == [
        "checkpoint checkpoint-8 is not usable: manifest.json is missing; moved to quarantine/checkpoint-8, "
        "falling back to an older one",
        "checkpoint checkpoint-6 is not usable: optimizer.pt has 100 bytes, the manifest says "
        f"{read_manifest(out / 'quarantine' / 'checkpoint-6').files['optimizer.pt'].size}; "
        "moved to quarantine/checkpoint-6, falling back to an older one",
    ]
    record = read_json(tmp_path / "run" / "resume.json")
    assert record["checkpoint"] == "checkpoint-4" and record["step"] == 4 and record["attempt"] == 3
    assert [s["checkpoint"] for s in record["skipped"]] == ["checkpoint-8", "checkpoint-6"]

    # the same name set aside twice keeps both
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / "manifest.json").unlink()
    assert resume_checkpoint(out, environ={}) == str(out / "checkpoint-4")
    assert len([p for p in (out / "quarantine").iterdir() if p.name.startswith("checkpoint-6")]) == 2

    # HF resumes from what it returned and finishes; its checkpoints are sealed again
    trainer = _trainer(out, steps=8, save_every=2, callbacks=[_callback(tmp_path, handle_signals=False)])
    trainer.train(resume_from_checkpoint=resume_checkpoint(out))
    assert trainer.state.global_step == 8
    assert verify(out / "checkpoint-8").step == 8


def test_nothing_verifies_is_a_fresh_start(tmp_path: Path) -> None:
    from trainsup.integrations.hf import resume_checkpoint

    assert resume_checkpoint(tmp_path / "missing", environ={}) is None
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoint-x").mkdir()  # not HF's name: not looked at
    environ = {"TRAINSUP_RUN_DIR": str(tmp_path / "run")}
    assert resume_checkpoint(tmp_path, environ=environ) is None
    assert (tmp_path / "quarantine" / "checkpoint-5" / "model.safetensors").exists()
    assert read_json(tmp_path / "run" / "resume.json")["select"] == "fresh"


def test_a_manifest_for_another_step_is_refused(tmp_path: Path) -> None:
    from trainsup.integrations.hf import resume_checkpoint, seal_checkpoint

    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w" * step)
    seal_checkpoint(tmp_path / "checkpoint-1", 1)
    seal_checkpoint(tmp_path / "checkpoint-2", 7)
    assert resume_checkpoint(tmp_path, environ={}) == str(tmp_path / "checkpoint-1")


# --- the seal under a power cut at each step ---------------------------------------------------------


HF_FILES = {"model.safetensors": b"m" * 3000, "optimizer.pt": b"o" * 5000, "trainer_state.json": b"{}"}


def _power_loss_module() -> Any:
    """tests/trainer/conftest.py, the trainer's power-loss model of the file system, under its own name."""
    import importlib.util

    if "trainer_power_loss" not in sys.modules:
        spec = importlib.util.spec_from_file_location("trainer_power_loss", Path(__file__).parent / "trainer" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["trainer_power_loss"] = module
        spec.loader.exec_module(module)
    return sys.modules["trainer_power_loss"]


def _crash_failures(tmp: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """HF writes checkpoint-20 (unsynced, through the power-loss model), then the seal runs;
    crash after every operation of both, in both power-loss models: what `resume_checkpoint`
    chooses must be checkpoint-10 or checkpoint-20, never nothing, and checkpoint-20 once
    the seal returned."""
    power = _power_loss_module()
    PowerLossModel, SimulatedCrash = power.PowerLossModel, power.SimulatedCrash
    from trainsup.integrations.hf import resume_checkpoint, seal_checkpoint

    base = tmp / "base"
    (base / "checkpoint-10").mkdir(parents=True)
    for name, data in HF_FILES.items():
        (base / "checkpoint-10" / name).write_bytes(data[:-1] + b"1")
    seal_checkpoint(base / "checkpoint-10", 10)

    def save(model: Any, root: Path) -> None:
        folder = root / "checkpoint-20"
        model.mkdir(folder)
        for name, data in HF_FILES.items():
            model.write_file(folder / name, lambda file, data=data: file.write(data))
        seal_checkpoint(folder, 20, ops=model)

    counting = tmp / "count"
    shutil.copytree(base, counting)
    counter = PowerLossModel(counting, skip=skip)
    save(counter, counting)
    total = len(counter.done)
    hf_ops = 1 + len(HF_FILES)
    failures = []
    for k in range(1, total + 1):
        for mode in ("strict", "metadata"):
            root = tmp / f"run-{k}-{mode}"
            shutil.copytree(base, root)
            model = PowerLossModel(root, crash_after=k, skip=skip)
            with pytest.raises(SimulatedCrash):
                save(model, root)
            survived = tmp / f"after-{k}-{mode}"
            model.materialize(survived, mode)
            where = f"crash after {k} ({'HF ' if k <= hf_ops else ''}{counter.done[k - 1]}, {mode})"
            chosen = resume_checkpoint(survived, environ={})
            name = Path(chosen).name if chosen else None
            if name not in ("checkpoint-10", "checkpoint-20"):
                failures.append(f"{where}: resumes {name}")
            elif k == total and name != "checkpoint-20":
                failures.append(f"power lost after the seal returned ({mode}): resumes {name}")
            elif name == "checkpoint-20":
                assert (survived / name / "optimizer.pt").read_bytes() == HF_FILES["optimizer.pt"]
    return failures


def test_every_crash_point_resumes_old_or_new(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert _crash_failures(tmp_path) == []


@pytest.mark.parametrize("removed", ["fsync_file", "fsync_dir"])
def test_harness_catches_a_seal_without_fsync(tmp_path: Path, removed: str) -> None:
    pytest.importorskip("torch")
    assert _crash_failures(tmp_path, skip=frozenset({removed})), f"the harness did not notice a seal without {removed}"


# --- under the daemon ------------------------------------------------------------------------------------

STEPS, SAVE_EVERY, SLOW_AT = 90, 10, 20


def _needs_hf() -> None:
    pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[dev]')")
    pytest.importorskip("accelerate", reason="accelerate is not installed (the HF Trainer needs it)")


def _command(tmp_path: Path, final: Path, *extra: str) -> list[str]:
    return [PY, str(JOB), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--step-delay", "0.04",
            "--final", str(final), *extra]


ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], dict]]:
    """The same script, uninterrupted, outside the daemon: started in the background at once
    (it runs while the supervised job waits in its sleeps and backoffs), read when called."""
    _needs_hf()
    import torch

    tmp = tmp_path_factory.mktemp("hf-reference")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    for name in ("TRAINSUP_RUN_DIR", "TRAINSUP_HEARTBEAT", "TRAINSUP_CHECKPOINT_DIR", "TRAINSUP_BATCH_SIZE"):
        env.pop(name, None)
    with open(tmp / "stderr", "wb") as stderr:
        proc = subprocess.Popen(_command(tmp, tmp / "final.pt", "--ckpt-dir", str(tmp / "ckpt"), "--step-delay", "0"),
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    loaded: dict = {}

    def get() -> dict:
        if not loaded:
            returncode = proc.wait(timeout=120)
            assert returncode == 0, (tmp / "stderr").read_text(errors="replace")[-3000:]
            loaded.update(torch.load(tmp / "final.pt", weights_only=True))
        return loaded

    yield get
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _assert_equal_to(reference: dict, final_path: Path) -> None:
    import torch

    final = torch.load(final_path, weights_only=True)
    assert final["global_step"] == reference["global_step"] == STEPS
    for part in ("model", "optimizer", "scheduler"):
        _same(final[part], reference[part], part)


def _same(a: Any, b: Any, where: str) -> None:
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ"
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _log(tmp_path: Path, job: str, attempt: int) -> str:
    path = tmp_path / "state" / "jobs" / job / f"attempt-{attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _run_dir(tmp_path: Path, job: str, attempt: int) -> Path:
    return tmp_path / "state" / "jobs" / job / f"attempt-{attempt}.run"


def _steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"^step (\d+)$", log, re.M)]


def _running_pid(cli: Cli, job: str, attempt: int) -> int:
    def running() -> int | None:
        status = cli.job(job)
        if status["state"] == "running" and len(status["attempts"]) == attempt and status.get("pid"):
            return status["pid"]
        return None
    return wait_for(running, 60, 0.05, f"attempt {attempt} running")


def _kill_job(pid: int) -> None:
    pgid = os.getpgid(pid)
    assert pgid != os.getpgrp(), "never kill the test's own group"
    os.killpg(pgid, signal.SIGKILL)


def _explain(cli: Cli, job: str, tmp_path: Path) -> str:
    status = cli.job(job)
    lines = [f"state={status['state']} result={status.get('result')}"]
    lines += [f"  attempt {a['number']}: reason={a['reason']} exit={a['exit_code']} signal={a['signal']} "
              f"before={a['checkpoint_before']} after={a['checkpoint_after']}" for a in status["attempts"]]
    lines += [f"  {e['kind']}: {e['message']}" for e in cli.json("show", job)["events"]]
    for attempt in status["attempts"]:
        log = _log(tmp_path, job, attempt["number"])
        lines.append(f"--- attempt {attempt['number']} log (trainsup lines, last steps) ---")
        lines += [line for line in log.splitlines() if "trainsup" in line or "resuming" in line or "fresh" in line]
        lines.append(f"steps {_steps(log)[:1]}…{_steps(log)[-1:]}")
    return "\n".join(lines)


@pytest.mark.slow
def test_three_sigkills_one_during_a_save_finish_equal(reference: Callable[[], dict], cli: Cli, daemon: DaemonProcess,
                                                     tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checkpoints = tmp_path / "ckpt"
    final = tmp_path / "final.pt"
    spec = write_spec(tmp_path / "hf.yaml", name="hf-sealed", checkpoint_dir="ckpt", env=ENV,
                      command=_command(tmp_path, final, "--slow-save-at", str(SLOW_AT),
                                       "--slow-marker", str(tmp_path / "slow-done")),
                      restart={"initial": "0.2s", "max": "1s", "max_restarts": 6})
    daemon.start()
    job = cli.submit(spec)

    # 1: during the save of checkpoint-20, after HF wrote it and before trainsup sealed it
    pid = _running_pid(cli, job, 1)
    wait_for(lambda: f"saving checkpoint-{SLOW_AT} slowly" in _log(tmp_path, job, 1), 60, 0.02, "the slow save")
    assert (checkpoints / f"checkpoint-{SLOW_AT}" / "trainer_state.json").exists()
    assert not (checkpoints / f"checkpoint-{SLOW_AT}" / "manifest.json").exists()
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
    assert f"checkpoint checkpoint-{SLOW_AT} is not usable: manifest.json is missing" in second, why
    assert f"resuming from {checkpoints / f'checkpoint-{SLOW_AT - SAVE_EVERY}'}" in second, why
    assert (checkpoints / "quarantine" / f"checkpoint-{SLOW_AT}" / "trainer_state.json").exists(), why
    for number in (3, 4):
        first = _steps(_log(tmp_path, job, number))[0]
        previous_steps = _steps(_log(tmp_path, job, number - 1))
        assert first % SAVE_EVERY == 1 and first <= max(previous_steps) + 1, why
    for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY):
        assert verify(checkpoints / f"checkpoint-{step}").step == step, why
    assert read_json(_run_dir(tmp_path, job, 4) / "exit.json")["reason"] == "finished", why
    beats = read_heartbeats(_run_dir(tmp_path, job, 4) / "heartbeat")
    assert beats and beats[0].step == STEPS and beats[0].total_steps == STEPS, why
    _assert_equal_to(reference(), final)


@pytest.mark.slow
def test_daemon_stop_saves_at_the_stop_and_resumes_with_no_step_lost(reference: Callable[[], dict], cli: Cli,
                                                                     daemon: DaemonProcess, tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    final = tmp_path / "final.pt"
    spec = write_spec(tmp_path / "hf.yaml", name="hf-stop", checkpoint_dir="ckpt", env=ENV, grace_period="30s",
                      command=_command(tmp_path, final), restart={"max_restarts": 0})
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
    _assert_equal_to(reference(), final)


@pytest.mark.slow
def test_the_example_job_runs_stops_and_resumes(tmp_path: Path) -> None:
    """jobs/hf-trainer/train.py as a user runs it: SIGINT (Ctrl+C) checkpoints and exits 75, a rerun finishes."""
    _needs_hf()
    import time

    example = REPO / "jobs" / "hf-trainer" / "train.py"
    beats = tmp_path / "heartbeat"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "TRAINSUP_RUN_DIR": str(tmp_path / "run"),
           "TRAINSUP_HEARTBEAT": str(beats)}
    command = [PY, str(example), "--max-steps", "40", "--save-steps", "20", "--output-dir", str(tmp_path / "out")]
    proc = subprocess.Popen([*command, "--step-delay", "0.1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # a heartbeat means training began, so the callback's Ctrl+C handler is in place
    # (the output dir appears earlier, while the Trainer is still being built)
    wait_for(lambda: any(beats.glob("rank-*.json")) or proc.poll() is not None, 60, 0.05, "training")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 75, output[-3000:]
    stopped_at = read_json(tmp_path / "run" / "exit.json")["step"]
    assert 0 < stopped_at < 40 and verify(tmp_path / "out" / f"checkpoint-{stopped_at}").step == stopped_at
    rerun = subprocess.run([*command, "--step-delay", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint-{stopped_at} (verified)" in rerun.stderr
    assert "finished at step 40" in rerun.stdout
    assert read_json(tmp_path / "run" / "exit.json")["reason"] == "finished"


@pytest.mark.parametrize("error, reason", [("torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2 GiB')", "oom"),
                                           ("ValueError('bad data')", "error")])
def test_an_uncaught_exception_writes_exit_json(tmp_path: Path, error: str, reason: str) -> None:
    pytest.importorskip("torch")
    code = ("import torch\nfrom types import SimpleNamespace\nfrom trainsup.integrations.hf import apply_batch\n"
            "apply_batch(SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=1))\n"
            f"raise {error}\n")
    env = {**os.environ, "TRAINSUP_RUN_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "Traceback" in result.stderr, "the usual traceback"
    record = read_json(tmp_path / "exit.json")
    assert record["reason"] == reason and record["step"] is None, record
