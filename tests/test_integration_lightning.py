"""trainsup.integrations.lightning: power-safe verified checkpoints, resume, save at the stop.

- the module imports without Lightning (resume_checkpoint and batch_from_env work);
- a simulated power cut after every write/fsync/rename of a save leaves the old or the
  new checkpoint, and `resume_checkpoint` picks one that loads (tests/trainer's
  PowerLossModel: only what was fsync'd survives);
- a truncated, bit-flipped or unsealed checkpoint is refused and set aside;
- real Lightning fits on CPU: manifests, removal, OOM and SIGTERM -> exit 75;
- under the real daemon (slow): 3 SIGKILLs, one during a save, finish at the right
  step; a daemon stop saves at the stop, exits 75, and the next attempt loses 0 steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support import Cli, DaemonProcess, wait_for, write_spec

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "lightning" / "train.py"
PY = sys.executable


def _power_loss_helpers() -> Any:
    """PowerLossModel and SimulatedCrash from tests/trainer/conftest.py (not a fixture here)."""
    spec = importlib.util.spec_from_file_location("_trainer_power_loss", REPO / "tests" / "trainer" / "conftest.py")
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- without Lightning --------------------------------------------------------------------

def test_imports_without_lightning(tmp_path: Path):
    code = f"""
import sys
sys.modules['lightning'] = None
sys.modules['pytorch_lightning'] = None
import trainsup.integrations.lightning as tl
assert tl.resume_checkpoint({str(tmp_path)!r}, write_record=False) is None
b = tl.batch_from_env(8, 4)
assert (b.micro, b.grad_accum) == (8, 4)
try:
    tl.PowerSafeCheckpointIO
except ImportError as exc:
    print("refused:", exc)
else:
    raise SystemExit("PowerSafeCheckpointIO without lightning")
"""
    env = {**os.environ, "TRAINSUP_BATCH_SIZE": "8", "TRAINSUP_GRAD_ACCUM": "4"}
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "need Lightning (pip install lightning)" in result.stdout


def test_batch_from_env_applies_the_supervisors_batch(monkeypatch: pytest.MonkeyPatch):
    from trainsup.integrations.lightning import batch_from_env

    monkeypatch.delenv("TRAINSUP_BATCH_SIZE", raising=False)
    monkeypatch.delenv("TRAINSUP_GRAD_ACCUM", raising=False)
    monkeypatch.delenv("TRAINSUP_GLOBAL_BATCH_SIZE", raising=False)
    assert (batch_from_env(32, 2).micro, batch_from_env(32, 2).grad_accum) == (32, 2)
    monkeypatch.setenv("TRAINSUP_BATCH_SIZE", "16")
    monkeypatch.setenv("TRAINSUP_GLOBAL_BATCH_SIZE", "64")
    batch = batch_from_env(32, 2)
    assert (batch.micro, batch.grad_accum) == (16, 4)


# --- the save protocol under power cuts ------------------------------------------------------

torch = pytest.importorskip("torch")
from trainsup.integrations.lightning import (  # noqa: E402
    UnverifiedCheckpointError,
    manifest_path,
    resume_checkpoint,
    save_checkpoint_file,
    verify_checkpoint,
)


def _ckpt(step: int, variant: int = 0) -> dict[str, Any]:
    return {"global_step": step, "epoch": step // 10, "state_dict": {"w": torch.full((256,), float(step + variant))}}


def _resumed(root: Path) -> tuple[int, float] | None:
    """What a restarted script would load: (global_step, first weight), or None."""
    chosen = resume_checkpoint(root, write_record=False)
    if chosen is None:
        return None
    loaded = torch.load(chosen, weights_only=True)
    return loaded["global_step"], float(loaded["state_dict"]["w"][0])


def _crash_failures(tmp: Path, initial: dict[str, int], name: str, new_step: int, skip: frozenset[str] = frozenset()):
    helpers = _power_loss_helpers()
    base = tmp / "base"
    base.mkdir()
    for file_name, step in initial.items():
        save_checkpoint_file(_ckpt(step), base / file_name)
    old = _resumed(base)
    assert old is not None
    new = (new_step, float(new_step + 7))

    counting = tmp / "count"
    shutil.copytree(base, counting)
    counter = helpers.PowerLossModel(counting, skip=skip)
    save_checkpoint_file(_ckpt(new_step, 7), counting / name, counter)
    total = len(counter.done)
    assert total >= 8, counter.done

    failures = []
    for k in range(1, total + 1):
        for mode in ("strict", "metadata"):
            root = tmp / f"run-{k}-{mode}"
            shutil.copytree(base, root)
            model = helpers.PowerLossModel(root, crash_after=k, skip=skip)
            with pytest.raises(helpers.SimulatedCrash):
                save_checkpoint_file(_ckpt(new_step, 7), root / name, model)
            survived = tmp / f"after-{k}-{mode}"
            model.materialize(survived, mode)
            where = f"crash after {k} ({counter.done[k - 1]}, {mode})"
            try:
                got = _resumed(survived)
            except Exception as exc:  # choosing and loading must never fail
                failures.append(f"{where}: {exc!r}")
                continue
            if got not in (old, new):
                failures.append(f"{where}: resumed {got}, not {old} or {new}")
            elif k == total and got != new:
                failures.append(f"power lost after the save returned ({mode}): resumed {got}, the new {new} is lost")
            else:
                assert not list(survived.glob(".*tmp-*")), "resume_checkpoint removed the temp files"
                # the next save over whatever was left works and wins
                save_checkpoint_file(_ckpt(new_step + 1), survived / name)
                assert _resumed(survived) == (new_step + 1, float(new_step + 1))
    return failures


def test_crash_while_replacing_last_ckpt_leaves_old_or_new(tmp_path: Path):
    # The hard case: the same name is overwritten and there is no other file to fall back to.
    assert _crash_failures(tmp_path, {"last.ckpt": 10}, "last.ckpt", 20) == []


def test_crash_while_writing_a_new_name_leaves_old_or_new(tmp_path: Path):
    assert _crash_failures(tmp_path, {"epoch=1-step=10.ckpt": 10, "last.ckpt": 10}, "epoch=2-step=20.ckpt", 20) == []


@pytest.mark.parametrize("removed", ["fsync_file", "fsync_dir"])
def test_harness_catches_a_save_without_fsync(tmp_path: Path, removed: str):
    assert _crash_failures(tmp_path, {"last.ckpt": 10}, "last.ckpt", 20, skip=frozenset({removed})), \
        f"the harness did not notice the save without {removed}"


# --- broken checkpoints --------------------------------------------------------------------------


def _seed(root: Path) -> None:
    for step in (10, 20, 30):
        save_checkpoint_file(_ckpt(step), root / f"epoch={step // 10}-step={step}.ckpt")


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "unsealed", "no-manifest-entry"])
def test_a_broken_newest_checkpoint_is_refused_and_set_aside(tmp_path: Path, damage: str, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("TRAINSUP_RUN_DIR", str(run_dir))
    monkeypatch.setenv("TRAINSUP_ATTEMPT", "2")
    root = tmp_path / "ckpt"
    _seed(root)
    newest = root / "epoch=3-step=30.ckpt"
    if damage == "truncate":
        os.truncate(newest, 100)
    elif damage == "bitflip":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0x01
        newest.write_bytes(bytes(data))
    elif damage == "unsealed":
        manifest_path(newest).unlink()  # e.g. written by plain Lightning
    else:
        save_checkpoint_file(_ckpt(30, 1), tmp_path / "other.ckpt")
        shutil.copy(manifest_path(tmp_path / "other.ckpt"), manifest_path(newest))  # same size, other sha256

    with pytest.raises(UnverifiedCheckpointError):
        verify_checkpoint(newest)
    pytest.importorskip("lightning")
    from trainsup.integrations.lightning import PowerSafeCheckpointIO

    with pytest.raises(UnverifiedCheckpointError, match=re.escape(newest.name)):
        PowerSafeCheckpointIO().load_checkpoint(newest)

    chosen = resume_checkpoint(root)
    assert chosen == str(root / "epoch=2-step=20.ckpt")
    assert not newest.exists(), "set aside"
    moved = root / "quarantine" / newest.name
    assert moved.exists(), "moved, never deleted"
    record = json.loads((run_dir / "resume.json").read_text())
    assert record["checkpoint"] == "epoch=2-step=20.ckpt" and record["step"] == 20 and record["attempt"] == 2
    assert [s["checkpoint"] for s in record["skipped"]] == [newest.name]
    assert PowerSafeCheckpointIO().load_checkpoint(chosen)["global_step"] == 20


def test_resume_prefers_the_largest_step_then_the_newest_file(tmp_path: Path):
    root = tmp_path
    save_checkpoint_file(_ckpt(30), root / "stop-step=30.ckpt")
    save_checkpoint_file(_ckpt(20), root / "epoch=2-step=20.ckpt")
    save_checkpoint_file(_ckpt(20), root / "last.ckpt")  # newer file, smaller step
    assert resume_checkpoint(root, write_record=False) == str(root / "stop-step=30.ckpt")
    (root / ".last.ckpt.tmp-1-abc").write_bytes(b"torn")
    (root / "epoch=9-step=90.ckpt.manifest.json").write_text("{}")  # its checkpoint never got its name
    assert resume_checkpoint(root, write_record=False) == str(root / "stop-step=30.ckpt")
    assert sorted(p.name for p in root.iterdir()) == [
        "epoch=2-step=20.ckpt", "epoch=2-step=20.ckpt.manifest.json", "last.ckpt", "last.ckpt.manifest.json",
        "stop-step=30.ckpt", "stop-step=30.ckpt.manifest.json"]
    assert resume_checkpoint(tmp_path / "missing", write_record=False) is None


# --- real Lightning, in process ------------------------------------------------------------------

def _tiny_fit(tmp_path: Path, max_steps: int, *, fail: BaseException | None = None, ckpt_path: str | None = None,
              save_top_k: int = 2):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from trainsup.integrations.lightning import PowerSafeCheckpointIO, TrainsupCallback

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            if fail is not None and self.global_step >= 3:
                raise fail
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    ckpt = tmp_path / "ckpt"
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[PowerSafeCheckpointIO()],
                        callbacks=[ModelCheckpoint(dirpath=ckpt, every_n_train_steps=2, save_top_k=save_top_k,
                                                   monitor="step", mode="max", save_last=True),
                                   TrainsupCallback(ckpt)])
    trainer.fit(Net(), DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
    return trainer, ckpt


def test_lightning_fit_writes_sealed_checkpoints_and_finished(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TRAINSUP_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("TRAINSUP_HEARTBEAT", str(tmp_path / "hb"))
    trainer, ckpt = _tiny_fit(tmp_path, 10)
    ckpts = sorted(p.name for p in ckpt.glob("*.ckpt"))
    # save_top_k=2: ModelCheckpoint removed older step files, and their manifests with them
    assert ckpts == ["epoch=0-step=8.ckpt", "epoch=1-step=10.ckpt", "last.ckpt"], ckpts
    for name in ckpts:
        assert verify_checkpoint(ckpt / name)["step"] in (8, 10)
    assert sorted(p.name for p in ckpt.glob("*.manifest.json")) == [n + ".manifest.json" for n in ckpts]
    assert not list(ckpt.glob(".*"))
    assert json.loads((tmp_path / "run" / "exit.json").read_text())["reason"] == "finished"
    beat = json.loads((tmp_path / "hb" / "rank-0.json").read_text())
    assert beat["step"] == 10 and beat["total_steps"] == 10

    chosen = resume_checkpoint(ckpt, write_record=False)
    assert verify_checkpoint(chosen)["step"] == 10
    trainer, _ = _tiny_fit(tmp_path, 14, ckpt_path=chosen)  # resumes through load_checkpoint
    assert trainer.global_step == 14


GLOO_EXIT_SCRIPT = """
import atexit, sys
import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from trainsup.integrations.lightning import TrainsupCallback

# registered first, so it runs last: after trainsup's own exit hook
atexit.register(lambda: print("group alive at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)

class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, callbacks=[TrainsupCallback(sys.argv[2])])
trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=4))
"""


def test_the_gloo_group_is_destroyed_before_interpreter_exit(tmp_path: Path):
    """Lightning ends only an NCCL group at exit; a gloo process that reaches interpreter
    finalization with its group alive can abort there (a finished run read as a crash).
    With the callback in the fit, the group is gone before then."""
    pytest.importorskip("lightning")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINSUP_", "SLURM_"))}
    result = subprocess.run([PY, "-c", GLOO_EXIT_SCRIPT, str(tmp_path / "store"), str(tmp_path / "ckpt")],
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "group alive at exit: False", result.stdout


def test_lightning_cuda_oom_writes_exit_json(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TRAINSUP_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(torch.OutOfMemoryError):
        _tiny_fit(tmp_path, 10, fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    record = json.loads((tmp_path / "run" / "exit.json").read_text())
    assert record["reason"] == "oom" and record["step"] == 3 and "out of memory" in record["detail"]


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_75(tmp_path: Path):
    """Standalone (no daemon): SIGTERM -> stop-step=N.ckpt, exit.json preempted, exit 75; rerun resumes at N + 1."""
    pytest.importorskip("lightning")
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    env = {**os.environ, "TRAINSUP_RUN_DIR": str(run_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [PY, str(JOB), "--steps", "40", "--save-every", "100", "--step-delay", "0.03", "--samples", "256",
               "--ckpt-dir", str(ckpt), "--out", str(tmp_path / "out.pt")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 5 "):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 75, "".join(lines)
    record = json.loads((run_dir / "exit.json").read_text())
    stopped = record["step"]
    assert record["reason"] == "preempted" and stopped >= 5
    assert [p.name for p in ckpt.glob("*.ckpt")] == [f"stop-step={stopped}.ckpt"]
    assert not (tmp_path / "out.pt").exists(), "the code after fit did not run"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    steps = [int(m) for m in re.findall(r"^step (\d+) ", second.stdout, re.M)]
    assert steps[0] == stopped + 1 and steps[-1] == 40, steps[:3]
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "finished"


# --- under the real daemon ------------------------------------------------------------------------

STEPS, SAVE_EVERY = 60, 10


def _job_command(out: Path, *extra: str) -> list[str]:
    return [PY, str(JOB), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--samples", "256",
            "--step-delay", "0.02", "--out", str(out), *extra]


def _spec(tmp_path: Path, name: str, *extra_args: str, **extra: Any) -> Path:
    pytest.importorskip("lightning", reason="lightning is not installed (pip install -e '.[dev]')")
    return write_spec(tmp_path / f"{name}.yaml", name=name, command=_job_command(tmp_path / "out.pt", *extra_args),
                      checkpoint_dir="ckpt", env={"OMP_NUM_THREADS": "1"}, **extra)


def _sealed_step(ckpt: Path) -> int:
    """The largest global step among the checkpoints whose manifest accepts them (sizes only)."""
    best = 0
    for path in ckpt.glob("*.ckpt"):
        try:
            best = max(best, verify_checkpoint(path, hashes=False).get("step") or 0)
        except (UnverifiedCheckpointError, OSError):
            pass
    return best


def _running_pid(cli: Cli, job: str, attempt: int, timeout: float = 60) -> int:
    def running() -> int | None:
        status = cli.job(job)
        if status["state"] == "running" and len(status["attempts"]) == attempt and status.get("pid"):
            return status["pid"]
        return None
    return wait_for(running, timeout, 0.05, f"attempt {attempt} running")


def _kill_job(pid: int) -> None:
    pgid = os.getpgid(pid)
    assert pgid != os.getpgrp(), "never kill the test's own group"
    os.killpg(pgid, signal.SIGKILL)


def _first_step(cli: Cli, job: str, attempt: int) -> int:
    log = cli.run("logs", job, "--attempt", str(attempt)).stdout
    return int(re.search(r"^step (\d+) ", log, re.M).group(1))


def _explain(cli: Cli, job: str, daemon: DaemonProcess) -> str:
    status = cli.job(job)
    lines = [f"state={status['state']} result={status.get('result')}"]
    lines += [f"  attempt {a['number']}: reason={a['reason']} exit={a['exit_code']} signal={a['signal']} "
              f"detail={a['detail']}" for a in status["attempts"]]
    lines.append(cli.run("logs", job).stdout[-4000:])
    return "\n".join(lines) + "\n--- daemon ---\n" + (daemon.log.read_text(errors="replace")[-2000:]
                                                      if daemon.log.exists() else "")


_REFERENCE: dict[str, Any] = {}


def _start_reference(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same job run once without interruption, outside trainsup: started in the background
    at the start of a test (it runs while the supervised job sleeps), read by _reference."""
    if "proc" not in _REFERENCE:
        tmp = tmp_path_factory.mktemp("lightning-reference")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
        env["OMP_NUM_THREADS"] = "1"
        with open(tmp / "stderr", "wb") as stderr:
            _REFERENCE["proc"] = subprocess.Popen(_job_command(tmp / "out.pt", "--ckpt-dir", str(tmp / "ckpt")),
                                                  env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _REFERENCE["tmp"] = tmp


def _reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    _start_reference(tmp_path_factory)
    if "result" not in _REFERENCE:
        tmp = _REFERENCE["tmp"]
        returncode = _REFERENCE["proc"].wait(timeout=180)
        assert returncode == 0, (tmp / "stderr").read_text(errors="replace")
        _REFERENCE["result"] = torch.load(tmp / "out.pt", weights_only=True)
    return _REFERENCE["result"]


def _compare(final: dict[str, Any], reference: dict[str, Any]) -> str:
    same_weights = all(torch.equal(final["state_dict"][k], reference["state_dict"][k]) for k in reference["state_dict"])
    diff = max(float((final["state_dict"][k] - reference["state_dict"][k]).abs().max()) for k in reference["state_dict"])
    return f"weights equal to an uninterrupted run: {same_weights} (max abs difference {diff:.3g})"


@pytest.mark.slow
def test_three_sigkills_one_during_a_save_finish_at_the_right_step(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory):
    rng = random.Random(int(time.time()))
    spec = _spec(tmp_path, "lightning-kills", "--save-delay", "0.3",
                 restart={"initial": "0.2s", "max": "1s", "max_restarts": 5})
    _start_reference(tmp_path_factory)
    ckpt = tmp_path / "ckpt"
    daemon.start()
    job = cli.submit(spec)

    notes = []
    for attempt in (1, 2, 3):
        pid = _running_pid(cli, job, attempt)
        before = _sealed_step(ckpt)
        if attempt == 2:  # in the middle of writing a checkpoint's temp file
            # the temp file names the writing pid: not one left by the kill of attempt 1
            wait_for(lambda: list(ckpt.glob(f".*.ckpt.tmp-{pid}-*")), 60, 0.01, "a save in progress")
            notes.append(f"attempt 2 killed during a save, newest sealed step {_sealed_step(ckpt)}")
        else:  # at a random moment once this attempt sealed a new checkpoint
            wait_for(lambda: _sealed_step(ckpt) > before, 60, 0.02, f"a new checkpoint in attempt {attempt}")
            time.sleep(rng.uniform(0, 0.6))
            notes.append(f"attempt {attempt} killed at a random moment, newest sealed step {_sealed_step(ckpt)}")
        _kill_job(pid)

    final = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=180)
    why = _explain(cli, job, daemon) + "\n" + "\n".join(notes)
    assert final["state"] == "succeeded", why
    assert [a["reason"] for a in final["attempts"]] == ["crash", "crash", "crash", "succeeded"], why
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["global_step"] == STEPS, why
    log = cli.run("logs", job).stdout
    assert len(re.findall(r"^resuming from ", log, re.M)) == 3, why  # the script's line, attempts 2-4
    assert "not usable" not in log, f"no checkpoint was ever torn\n{why}"
    assert not (ckpt / "quarantine").exists(), why
    assert not list(ckpt.glob(".*tmp-*")), "the temp file of the killed save was removed"
    comparison = _compare(result, _reference(tmp_path_factory))
    print(f"\n[lightning, 3 SIGKILLs] {comparison}; " + "; ".join(notes))


@pytest.mark.slow
def test_daemon_stop_saves_at_the_stop_and_loses_no_step(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory):
    spec = _spec(tmp_path, "lightning-stop", grace_period="30s", restart={"max_restarts": 0})
    _start_reference(tmp_path_factory)
    ckpt = tmp_path / "ckpt"
    daemon.start()
    job = cli.submit(spec)
    _running_pid(cli, job, 1)
    wait_for(lambda: _sealed_step(ckpt) >= 2 * SAVE_EVERY, 60, 0.05, "two checkpoints")

    assert daemon.stop(timeout=60) == 0
    stopped = cli.job(job)
    why = _explain(cli, job, daemon)
    assert stopped["state"] == "queued", why
    [first] = stopped["attempts"]
    assert first["reason"] == "interrupted" and first["exit_code"] == 75 and first["signal"] is None, why
    [exit_json] = Path(cli.env["TRAINSUP_HOME"]).glob("jobs/*/attempt-1.run/exit.json")
    record = json.loads(exit_json.read_text())
    saved = record["step"]
    assert record["reason"] == "preempted" and saved > 2 * SAVE_EVERY - 1, record
    assert (ckpt / f"stop-step={saved}.ckpt").exists() and verify_checkpoint(ckpt / f"stop-step={saved}.ckpt")
    assert not (tmp_path / "out.pt").exists(), "it did not run to the end"

    daemon.start()
    final = cli.wait_state(job, "succeeded", "failed", "cancelled", timeout=180)
    why = _explain(cli, job, daemon)
    assert final["state"] == "succeeded", why
    assert [a["reason"] for a in final["attempts"]] == ["interrupted", "succeeded"], why
    assert _first_step(cli, job, 2) == saved + 1, f"0 steps lost: saved {saved}\n{why}"
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["global_step"] == STEPS
    comparison = _compare(result, _reference(tmp_path_factory))
    print(f"\n[lightning, daemon stop at step {saved}] {comparison}")
