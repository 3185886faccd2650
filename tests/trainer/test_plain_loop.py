"""The plain loop: true steps per epoch after a mid-epoch resume, best checkpoints that
carry the metric of their own step, and fine-tuning a new run from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup.trainer import ResumableSampler, Retention, Saving, Session

DATA = TensorDataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)))


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def session_for(path: Path, model: Any = None, optimizer: Any = None, **kwargs: Any) -> Session:
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("environ", {})
    return Session(model, optimizer, checkpoint_dir=path, **kwargs)


def run_epochs(path: Path, epochs: int, stop_after: tuple[int, int] | None = None) -> tuple[list[float], list[tuple]]:
    """Train; per-epoch mean loss from a running sum over `session.steps_in_epoch`.
    `stop_after=(epoch, steps)` leaves the block after that many steps of that epoch."""
    model, optimizer = make()
    extra: dict[str, Any] = {"sum": 0.0, "means": []}
    seen: list[tuple] = []
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    with session_for(path, model, optimizer, extra=extra, saving=Saving(every_seconds=None)) as session:
        for epoch in session.epochs(epochs):
            for step in session.steps(loader, grad_accum=2):
                seen.append((epoch, step.index, step.of, session.step_in_epoch, session.steps_in_epoch))
                for (x,) in step:
                    loss = model(x).pow(2).mean() / len(step)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                extra["sum"] += model(DATA.tensors[0][:4]).pow(2).mean().item()
                session.step_done()
                if stop_after == (epoch, step.index + 1):
                    return extra["means"], seen  # on_exit saves mid-epoch
            assert session.step_in_epoch == session.steps_in_epoch
            extra["means"].append(extra["sum"] / session.steps_in_epoch)
            extra["sum"] = 0.0
    return extra["means"], seen


def test_mid_epoch_resume_reports_the_whole_epoch(tmp_path: Path) -> None:
    straight, seen = run_epochs(tmp_path / "a", 3)
    assert [s[1] for s in seen] == [0, 1, 2, 3, 4] * 3 and {s[2] for s in seen} == {5}
    _, first = run_epochs(tmp_path / "b", 3, stop_after=(1, 3))
    assert first[-1] == (1, 2, 5, 2, 5)
    resumed, second = run_epochs(tmp_path / "b", 3)
    # the resumed loader has only 2 steps (4 batches) left in epoch 1, but the session knows 5
    assert second[:2] == [(1, 3, 5, 3, 5), (1, 4, 5, 4, 5)]
    assert resumed == straight


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def test_a_mid_epoch_save_does_not_inherit_the_epochs_metric(tmp_path: Path) -> None:
    model, optimizer = make()
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    vals = [0.5, 0.9]
    retention = Retention(keep_last=None, keep_best=1, metric="val")
    with session_for(tmp_path, model, optimizer, retention=retention,
                     saving=Saving(every_steps=3, every_seconds=None)) as session:
        for epoch in session.epochs(2):
            for step in session.steps(loader, grad_accum=2):
                for (x,) in step:
                    model(x).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
                session.step_done(loss=1.0)
            session.report(val=vals[epoch])
    # steps 3, 6, 9 are mid-epoch saves; 5 and 10 end the epochs with val 0.5 and 0.9
    assert manifest(tmp_path / "step-000000005")["metrics"] == {"loss": 1.0, "val": 0.5}
    for step in (6, 9):
        assert manifest(tmp_path / f"step-00000000{step}")["metrics"] == {"loss": 1.0}
    assert manifest(tmp_path / "step-000000010")["metrics"]["val"] == 0.9
    assert next(session.checkpoints.verified("best", "val", "min")).step == 5
    # resuming keeps the metrics for heartbeats, but the next save does not claim them
    with session_for(tmp_path, *make(), retention=retention) as resumed:
        assert resumed.metrics["val"] == 0.9
        resumed.step_done(loss=2.0)
        resumed.save(wait=True)
    assert manifest(tmp_path / "step-000000011")["metrics"] == {"loss": 2.0}


def test_ties_keep_the_older_checkpoint(tmp_path: Path) -> None:
    retention = Retention(keep_last=1, keep_best=1, metric="val", mode="max")
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, retention=retention, saving=Saving(every_seconds=None)) as session:
        for val in (0.3, 0.7, 0.7, 0.7, 0.2):
            session.step_done(val=val)
            session.save(wait=True)
    assert sorted(p.name for p in session.checkpoints.step_dirs()) == ["step-000000002", "step-000000005"]
    with session_for(tmp_path, *make(), retention=retention, resume="best") as resumed:
        assert resumed.resumed_from is not None and resumed.resumed_from.step == 2


def test_fine_tune_a_new_run_from_the_best_checkpoint(tmp_path: Path) -> None:
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"
    model, optimizer = make()
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    retention = Retention(keep_last=None, metric="val")
    with session_for(pretrain, model, optimizer, retention=retention, saving=Saving(every_seconds=None)) as session:
        for epoch in session.epochs(3):
            for step in session.steps(loader):
                for (x,) in step:
                    model(x).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
                session.step_done()
            session.report(val=[0.4, 0.1, 0.3][epoch])
    best = pretrain / "step-000000020"
    best_weights = torch.load(best / "state.pt", weights_only=True)["model"]

    model2 = make()[0]
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-3)  # a different, fresh optimizer
    run_dir = tmp_path / "run"
    with session_for(finetune, model2, optimizer2, retention=retention, init_from=f"best:{pretrain}",
                     environ={"TRAINSUP_RUN_DIR": str(run_dir)}) as session:
        assert (session.epoch, session.step, session.resumed_from) == (0, 0, None)
        for key, value in model2.state_dict().items():
            assert torch.equal(value, best_weights[key])
        assert optimizer2.state_dict()["state"] == {}
        session.step_done(loss=1.0)
        session.save(wait=True)
    origin = {"path": str(best), "checkpoint": "step-000000020", "step": 20, "select": "best",
              "metrics": {"val": 0.1}}
    assert manifest(finetune / "step-000000001")["started_from"]["origin"] == origin
    assert json.loads((run_dir / "resume.json").read_text())["origin"] == origin
    assert (pretrain / "step-000000030").is_dir()  # the source run is untouched

    # a restart of the new run resumes its own checkpoint and keeps recording the origin
    with session_for(finetune, *make(), retention=retention, init_from=f"best:{pretrain}") as session:
        assert session.resumed_from is not None and session.step == 1
        session.step_done()
        session.save(wait=True)
    assert manifest(finetune / "step-000000002")["started_from"]["origin"] == origin

    # any checkpoint directory works too
    model3 = make()[0]
    with session_for(tmp_path / "other", model3, None, init_from=pretrain / "step-000000010") as session:
        session.step_done()
        session.save(wait=True)
    assert manifest(tmp_path / "other" / "step-000000001")["started_from"]["origin"]["step"] == 10


def test_init_from_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    import pytest
    from trainsup.trainer.errors import OptionError

    with pytest.raises(OptionError, match="outside this run's checkpoint_dir"):
        session_for(tmp_path, *make(), init_from=f"latest:{tmp_path}")
    with pytest.raises(OptionError, match="needs Retention"):
        session_for(tmp_path / "a", *make(), init_from=f"best:{tmp_path / 'b'}")
    session = session_for(tmp_path / "a", *make(), init_from=f"latest:{tmp_path / 'b'}")
    with pytest.raises(OptionError, match="no checkpoint there verifies"):
        session.start()
