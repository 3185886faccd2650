"""What the trainer leaves for the supervisor: exit.json's reason and resume.json's skipped checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer
from trainsup.batch import Batch
from trainsup.trainer import CheckpointDir, ResumableSampler, Retention, Saving, Session

REPO = Path(__file__).resolve().parents[2]
DATA = TensorDataset(torch.randn(24, 4, generator=torch.Generator().manual_seed(0)))


def make(hidden: int = 8, lr: float = 0.1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 1))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def session_for(tmp_path: Path, model: Any = None, optimizer: Any = None, **kwargs: Any) -> Session:
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("environ", {"TRAINSUP_RUN_DIR": str(tmp_path / "run")})
    return Session(model, optimizer, checkpoint_dir=tmp_path / "ckpt", **kwargs)


def train(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    for _ in session.epochs(epochs):
        for step in session.steps(loader):
            for (x,) in step:
                (model(x).pow(2).mean() / len(step)).backward()
            optimizer.step()
            optimizer.zero_grad()
            session.step_done()


def exit_info(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "run" / "exit.json").read_text())


def resume_info(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "run" / "resume.json").read_text())


# -- exit.json: finished, and only on a normal end ---------------------------------


def test_a_loop_that_runs_to_its_end_writes_finished(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        train(session, model, optimizer, 2)
    assert exit_info(tmp_path) == {"reason": "finished", "step": 12,
                                   "detail": "finished at step 12, epoch 2 of 2; last checkpoint step-000000012"}


def test_leaving_the_block_without_a_loop_is_finished_too(tmp_path: Path) -> None:
    with session_for(tmp_path, *make()) as session:
        session.step_done()
    info = exit_info(tmp_path)
    assert info["reason"] == "finished" and info["step"] == 1


@pytest.mark.parametrize(("raised", "reason"), [
    (KeyError("label"), "error"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
])
def test_an_exception_is_not_finished(tmp_path: Path, raised: Exception, reason: str) -> None:
    with pytest.raises(type(raised)):
        with session_for(tmp_path, *make()) as session:
            session.step_done()
            raise raised
    info = exit_info(tmp_path)
    assert info["reason"] == reason and info["step"] == 1


def test_a_stop_is_preempted_not_finished(tmp_path: Path) -> None:
    model, optimizer = make()
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, model, optimizer, handle_signals=True) as session:
            loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
            for _ in session.epochs(2):
                for step in session.steps(loader):
                    for (x,) in step:
                        model(x).sum().backward()
                    if session.step == 2:
                        os.kill(os.getpid(), signal.SIGTERM)
                    session.step_done()
    assert exited.value.code == 75
    assert exit_info(tmp_path) == {"reason": "preempted", "step": 3, "detail": "SIGTERM: checkpoint step-000000003 saved"}


def test_a_loop_that_leaves_on_the_stop_request_is_preempted(tmp_path: Path) -> None:
    """The script noticed `stop_requested` first and broke out: not finished, so checkpoint and exit 75."""
    model, optimizer = make()
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, model, optimizer, handle_signals=True, saving=Saving(on_exit=False)) as session:
            loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
            for _ in session.epochs(2):
                session.beat()
                os.kill(os.getpid(), signal.SIGUSR1)
                if session.stop_requested:  # e.g. an evaluation cut short
                    break
                train(session, model, optimizer, 2)
    assert exited.value.code == 75
    assert exit_info(tmp_path)["reason"] == "preempted"
    assert (tmp_path / "ckpt" / "step-000000000").is_dir()


# -- exit.json: config_error for what no restart can fix ---------------------------------


def _saved(tmp_path: Path, **kwargs: Any) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, **kwargs) as session:
        train(session, model, optimizer, 1)


class Ema(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.shadow = torch.nn.Linear(4, width)


def _mismatched_model(tmp_path: Path) -> Session:
    return session_for(tmp_path, *make(hidden=16))


def _mismatched_optimizer(tmp_path: Path) -> Session:
    model, _ = make()
    optimizer = torch.optim.SGD([{"params": [model[0].weight]}, {"params": [model[0].bias, *model[1].parameters()]}],
                                lr=0.1, momentum=0.9)
    return session_for(tmp_path, model, optimizer)


def _mismatched_extra(tmp_path: Path) -> Session:
    return session_for(tmp_path, *make(), extra={"ema": Ema(3)})


@pytest.mark.parametrize(("session", "sentence"), [
    (_mismatched_model, "The model does not match checkpoint step-000000006: '0.weight' has shape (16, 4) in the model"),
    (_mismatched_optimizer, "The optimizer does not match checkpoint step-000000006: "),
    (_mismatched_extra, "The extra 'ema' does not match checkpoint step-000000006: size mismatch for shadow.weight"),
])
def test_a_state_that_does_not_fit_is_a_config_error(tmp_path: Path, capsys: Any, session: Any, sentence: str) -> None:
    _saved(tmp_path, extra={"ema": Ema(2)})
    with pytest.raises(SystemExit) as exited:
        with session(tmp_path):
            pass
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {sentence}") and err.endswith("."), err
    info = exit_info(tmp_path)
    assert info["reason"] == "config_error" and info["detail"] == err.removeprefix("error: ")


def _past_the_end(session: Session) -> None:
    for _ in session.epochs(0):
        pass


def _bad_batch(session: Session) -> None:
    Batch.from_env(32, 2, environ={"TRAINSUP_BATCH_SIZE": "24"})


def _misused_loop(session: Session) -> None:
    for _ in session.steps(DataLoader(DATA, batch_size=4)):
        pass


def _bad_option(session: Session) -> None:
    Saving(every_steps=0)


@pytest.mark.parametrize(("body", "error", "sentence"), [
    (_past_the_end, trainer.EpochOutOfRangeError, "The run asks for 0 epochs but step-000000006 has already finished 1;"),
    (_bad_batch, trainer.BatchError, "The micro-batch 24 does not divide the global batch 64."),
    (_misused_loop, trainer.LoopUsageError, "session.steps() needs a DataLoader with batch_size"),
    (_bad_option, trainer.OptionError, "Saving every_steps must be at least 1"),
])
def test_errors_no_restart_can_fix_are_config_errors(tmp_path: Path, capsys: Any, body: Any, error: type,
                                                     sentence: str) -> None:
    assert getattr(error, "restartable", False) is False
    _saved(tmp_path)
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, *make()) as session:
            body(session)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {sentence}")
    info = exit_info(tmp_path)
    assert info["reason"] == "config_error" and info["detail"] == err.removeprefix("error: ") and info["step"] == 6


def test_a_failed_save_stays_restartable(tmp_path: Path, capsys: Any, helpers: Any) -> None:
    assert trainer.CheckpointSaveError.restartable and trainer.CheckpointDirLockedError.restartable
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, *make(), ops=helpers.NoSpaceOps()) as session:
            session.step_done()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: Saving checkpoint step-000000001 failed")
    assert exit_info(tmp_path)["reason"] == "error"


def test_an_impossible_option_before_the_session_is_a_config_error_too(tmp_path: Path) -> None:
    """Outside `with Session`: the hook installed by `import trainsup.trainer` writes exit.json."""
    script = "from trainsup import trainer\ntrainer.Retention(keep_last=0)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINSUP_RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: Retention keep_last must be at least 1, or None to keep every checkpoint."
    assert exit_info(tmp_path) == {"reason": "config_error", "step": None,
                                   "detail": "Retention keep_last must be at least 1, or None to keep every checkpoint."}


# -- resume.json: what the run started from, and what it skipped ---------------------------------


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unloadable(root: Path, step: int) -> None:
    """A checkpoint that verifies but whose state.pt is not a trainsup state file."""
    meta = {"epoch": 9, "position": 0, "torch_version": torch.__version__, "created": time.time()}
    CheckpointDir(root, retention=Retention(keep_last=None)).save(step, {"state.pt": lambda f: f.write(b"garbage")}, meta)


def test_resume_json_names_the_newer_checkpoints_it_skipped(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, saving=Saving(every_steps=2), retention=Retention(keep_last=None)) as session:
        train(session, model, optimizer, 1)
    _corrupt(tmp_path / "ckpt" / "step-000000006" / "state.pt")
    _unloadable(tmp_path / "ckpt", 7)
    with session_for(tmp_path, *make(), environ={"TRAINSUP_RUN_DIR": str(tmp_path / "run"), "TRAINSUP_ATTEMPT": "2"}) as session:
        assert session.step == 4
    info = resume_info(tmp_path)
    unloadable = info["skipped"][0]
    assert unloadable["checkpoint"] == "step-000000007"
    assert unloadable["why"] == "state.pt cannot be loaded (UnpicklingError: Weights only load failed)"
    assert info == {
        "select": "latest", "checkpoint": "step-000000004", "step": 4, "attempt": 2,
        "skipped": [unloadable, {"checkpoint": "step-000000006", "why": "state.pt does not match its blake3 in the manifest"}],
    }
    assert not (tmp_path / "ckpt" / "step-000000006").exists(), "set aside so that no later restart tries it"


def test_resume_json_without_skips_keeps_its_keys(tmp_path: Path) -> None:
    _saved(tmp_path)
    with session_for(tmp_path, *make()):
        pass
    assert resume_info(tmp_path) == {"select": "latest", "checkpoint": "step-000000006", "step": 6, "attempt": 1,
                                     "skipped": []}


def test_a_fresh_start_because_every_checkpoint_is_broken_writes_resume_json(tmp_path: Path) -> None:
    _saved(tmp_path)
    _corrupt(tmp_path / "ckpt" / "step-000000006" / "manifest.json")
    with session_for(tmp_path, *make()) as session:
        assert session.step == 0 and session.resumed_from is None
    info = resume_info(tmp_path)
    assert info["select"] == "fresh" and info["checkpoint"] is None and info["step"] == 0
    assert [s["checkpoint"] for s in info["skipped"]] == ["step-000000006"]
    assert not list((tmp_path / "ckpt").glob("step-000000006"))
    assert list((tmp_path / "ckpt").glob("superseded-step-000000006-*"))


def test_a_fresh_start_with_no_checkpoint_writes_no_resume_json(tmp_path: Path) -> None:
    with session_for(tmp_path, *make()):
        pass
    assert not (tmp_path / "run" / "resume.json").exists()
