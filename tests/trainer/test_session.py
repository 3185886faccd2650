"""Session behaviour in-process: options, resume selection, errors, locking, heartbeats, background save."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainsup import trainer
from trainsup.contracts import read_heartbeats
from trainsup.trainer import Batch, ResumableSampler, Retention, Saving, Session

DATA = TensorDataset(torch.arange(24), torch.randn(24, 4, generator=torch.Generator().manual_seed(0)))


def make(hidden: int = 8) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def train(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
          metric: Any = None, seen: list[int] | None = None) -> None:
    loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
    for epoch in session.epochs(epochs):
        for step in session.steps(loader):
            for ids, x in step:
                (model(x).pow(2).mean() / len(step)).backward()
                if seen is not None:
                    seen.extend(ids.tolist())
            optimizer.step()
            optimizer.zero_grad()
            session.step_done(loss=1.0)
        if metric is not None:
            session.report(val=metric(epoch))


def session_for(path: Path, model: Any = None, optimizer: Any = None, **kwargs: Any) -> Session:
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("environ", {})
    return Session(model, optimizer, checkpoint_dir=path, **kwargs)


def test_missing_checkpoint_is_a_fresh_start_said_out_loud(tmp_path: Path, trainer_log: Any) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        assert (session.epoch, session.step, session.position) == (0, 0, 0)
    assert any("starting fresh from epoch 0, step 0: no checkpoint yet" in r.getMessage() for r in trainer_log.records)


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    model, optimizer = make()
    extra = {"history": [1.0, 2.0], "best": 0.5}
    with session_for(tmp_path, model, optimizer, extra=extra, saving=Saving(every_steps=2, on_exit=False)) as session:
        train(session, model, optimizer, 1)
        assert session.step == 6
    model2, optimizer2 = make()
    extra2: dict[str, Any] = {"history": [], "best": None}
    with session_for(tmp_path, model2, optimizer2, extra=extra2) as session:
        assert (session.epoch, session.step, session.position) == (1, 6, 0)
        assert extra2 == {"history": [1.0, 2.0], "best": 0.5}
        for a, b in zip(model.parameters(), model2.parameters()):
            assert torch.equal(a, b)
        assert session.resumed_from is not None and session.resumed_from.name == "step-000000006"


def test_resume_from_best_and_record_it(tmp_path: Path, trainer_log: Any) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, retention=Retention(keep_last=None),
                     saving=Saving(every_seconds=None)) as session:
        train(session, model, optimizer, 4, metric=lambda e: [0.5, 0.2, 0.4, 0.3][e])
    # epoch-end checkpoints at steps 6, 12, 18, 24; val is reported after each epoch's steps,
    # so it reaches the checkpoint written at the end of that epoch
    run_dir = tmp_path / "run"
    model2, optimizer2 = make()
    environ = {"TRAINSUP_RUN_DIR": str(run_dir)}
    with session_for(tmp_path, model2, optimizer2, resume="best", retention=Retention(metric="val"), environ=environ) as session:
        assert session.resumed_from is not None and session.resumed_from.step == 12
        assert session.epoch == 2
        session.step_done()
        session.save()
    assert json.loads((run_dir / "resume.json").read_text())["checkpoint"] == "step-000000012"
    newest = json.loads((tmp_path / "step-000000013" / "manifest.json").read_text())
    assert newest["started_from"]["select"] == "best" and newest["started_from"]["checkpoint"] == "step-000000012"
    assert {p.name.split("-")[1] for p in tmp_path.glob("superseded-*")} == {"step"}
    # a restart of that fine-tuning (attempt 2) continues it instead of going back to the best
    with session_for(tmp_path, *make(), resume="best", retention=Retention(metric="val"),
                     environ={"TRAINSUP_ATTEMPT": "2"}) as session:
        assert session.resumed_from is not None and session.resumed_from.step == 13


def test_architecture_mismatch_is_one_sentence_and_exit_1(tmp_path: Path, capsys: Any) -> None:
    model, optimizer = make(hidden=8)
    with session_for(tmp_path, model, optimizer) as session:
        session.step_done()
    wider, wider_optimizer = make(hidden=16)
    with pytest.raises(trainer.ArchitectureMismatchError) as raised:
        session_for(tmp_path, wider, wider_optimizer).start()
    message = str(raised.value)
    assert "'0.weight' has shape (16, 4) in the model but (8, 4) in the checkpoint" in message
    assert message.count(".") <= 3 + message.count("'0.") + message.count("step-") and "\n" not in message

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, wider, wider_optimizer, environ={"TRAINSUP_RUN_DIR": str(run_dir)}):
            pass
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {message}"
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "config_error"


def test_epoch_already_past_the_end_is_an_error(tmp_path: Path, capsys: Any) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        train(session, model, optimizer, 3)
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path, *make()) as session:
            train(session, model, optimizer, 2)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: The run asks for 2 epochs but step-000000018 has already finished 3; "
                   "raise the number of epochs or start fresh.")
    with session_for(tmp_path, *make()) as session:  # exactly done: nothing to train, no error
        train(session, model, optimizer, 3)
        assert session.step == 18


def test_standalone_run_locks_the_directory(tmp_path: Path) -> None:
    with session_for(tmp_path, *make()):
        with pytest.raises(trainer.CheckpointDirLockedError, match="Another run is using the checkpoint directory"):
            session_for(tmp_path, *make()).start()
        # under the daemon, the supervisor holds the lock: the library does not take it
        supervised = session_for(tmp_path, *make(), environ={"TRAINSUP_JOB_ID": "j1"}).start()
        supervised.close()
    session_for(tmp_path, *make()).start().close()  # released


def test_out_of_memory_writes_exit_json_and_propagates(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="out of memory"):
        with session_for(tmp_path / "ck", *make(), environ={"TRAINSUP_RUN_DIR": str(run_dir)}) as session:
            session.step_done()
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    info = json.loads((run_dir / "exit.json").read_text())
    assert info["reason"] == "oom" and info["step"] == 1 and "out of memory" in info["detail"]


def test_background_save_snapshots_then_persists(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, saving=Saving(in_background=True)) as session:
        session.step_done()
        before = [p.detach().clone() for p in model.parameters()]
        assert session.save() is None
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()  # the training loop moves on while the save persists (the step waits for its copy)
        assert not torch.equal(next(model.parameters()), before[0])
        checkpoint = session.wait_for_save()
        assert checkpoint is not None and checkpoint.name == "step-000000001"
        assert (tmp_path / "LATEST").read_text() == "step-000000001\n"
    state = torch.load(tmp_path / "step-000000001" / "state.pt", weights_only=True)
    for saved, old in zip(state["model"].values(), before):
        assert torch.equal(saved, old)


def test_heartbeats_are_rate_limited_and_complete(tmp_path: Path) -> None:
    beats = tmp_path / "hb"
    environ = {"TRAINSUP_HEARTBEAT": str(beats), "RANK": "0"}
    with session_for(tmp_path / "ck", *make(), environ=environ) as session:
        assert json.loads((beats / "rank-0.json").read_text())["phase"] == "start"
        heartbeat = session._heartbeat
        writes = []
        original = heartbeat.beat
        heartbeat.beat = lambda **kw: writes.append(kw["phase"]) or original(**kw)  # type: ignore[method-assign]
        calls, started = 0, time.monotonic()
        while time.monotonic() - started < 0.6:
            session.step_done(loss=0.5)
            calls += 1
        elapsed = time.monotonic() - started
        assert 2 <= len(writes) <= elapsed / 0.25 + 1, (len(writes), elapsed)
        assert elapsed / calls < 0.0005, "a rate-limited step boundary must cost microseconds"
        beat = json.loads((beats / "rank-0.json").read_text())
        assert set(beat) == {"time", "step", "epoch", "phase", "loss", "samples_per_s", "max_memory_bytes", "pid", "total_steps"}
        assert beat["loss"] == 0.5 and beat["phase"] == "train"
        writes.clear()
        session.save()
        assert writes == ["checkpoint", "train"]
        assert json.loads((beats / "rank-0.json").read_text())["step"] == calls
    [record] = read_heartbeats(beats)  # the supervisor's reader understands what the trainer wrote
    assert (record.rank, record.step, record.phase) == (0, calls, "train")


def test_a_background_save_beats_checkpoint_only_while_the_loop_waits_for_one(tmp_path: Path) -> None:
    environ = {"TRAINSUP_HEARTBEAT": str(tmp_path / "hb"), "RANK": "0", "TRAINSUP_SNAPSHOTS": "0"}
    model, optimizer = make()
    with session_for(tmp_path / "ck", model, optimizer, environ=environ,
                     saving=Saving(every_seconds=None, in_background=True)) as session:
        heartbeat = session._heartbeat
        writes: list[str] = []
        original = heartbeat.beat
        heartbeat.beat = lambda **kw: writes.append(kw["phase"]) or original(**kw)  # type: ignore[method-assign]
        session.step_done()
        writes.clear()
        gate = threading.Event()
        session._saver._background.start(gate.wait)  # a save still in flight, as a slow disk leaves one
        threading.Timer(0.2, gate.set).start()
        session.save()  # waits for the one in flight first: the daemon's checkpoint timeout applies
        assert writes == ["checkpoint", "train"]
        session.wait_for_save()
        writes.clear()
        session.save()  # nothing in flight: returns at once, no beat
        assert writes == []
        session.wait_for_save()  # the loop waits for it
        assert writes == ["checkpoint", "train"]
        writes.clear()
        session.wait_for_save()  # nothing in flight
        session.save(wait=True)
        assert writes == ["checkpoint", "train"]


def test_a_batch_error_inside_the_session_is_one_line_and_exit_1(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        with session_for(tmp_path / "ck", *make(), environ={"TRAINSUP_RUN_DIR": str(run_dir)}):
            Batch.from_env(32, 2, environ={"TRAINSUP_BATCH_SIZE": "24"})
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: The micro-batch 24 does not divide the global batch 64."
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "config_error"


@pytest.mark.parametrize(("options", "message"), [
    (lambda: Saving(every_steps=0), "every_steps must be at least 1"),
    (lambda: Saving(every_seconds=0), "every_seconds must be more than 0"),
    (lambda: Retention(keep_last=0), "keep_last must be at least 1"),
    (lambda: Retention(keep_best=1), "keep_best needs a metric"),
    (lambda: Retention(mode="top"), "mode must be 'min' or 'max'"),
    (lambda: Session(checkpoint_dir="/nonexistent", resume="best"), "resume='best' needs Retention"),
    (lambda: Session(checkpoint_dir="/nonexistent", resume="newest"), "resume must be 'latest', 'best' or 'none'"),
])
def test_impossible_options_are_one_sentence(options: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        options()
    assert str(raised.value).endswith(".") and "\n" not in str(raised.value)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    sampler = ResumableSampler(10, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(ResumableSampler(10, seed=1)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_start(4)
    assert list(sampler) == sampler.order()[4:] and len(sampler) == 6


def test_resume_with_a_smaller_micro_batch_keeps_the_sample_position(tmp_path: Path) -> None:
    model, optimizer = make()
    seen: list[int] = []
    with session_for(tmp_path, model, optimizer, batch=Batch(4, 2), saving=Saving(every_steps=1, on_exit=False)) as session:
        loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
        for _ in session.epochs(1):
            for step in session.steps(loader):
                for ids, _x in step:
                    seen.extend(ids.tolist())
                session.step_done()
                if session.step == 2:
                    break
            break
    assert session.position == 16
    model2, optimizer2 = make()
    batch = Batch.from_env(4, 2, environ={"TRAINSUP_BATCH_SIZE": "2", "TRAINSUP_GLOBAL_BATCH_SIZE": "8"})
    assert batch == Batch(2, 4)
    with session_for(tmp_path, model2, optimizer2, batch=batch) as session:
        loader = DataLoader(DATA, batch_size=batch.micro, sampler=ResumableSampler(DATA, seed=3))
        for _ in session.epochs(1):
            for step in session.steps(loader):
                assert len(step) == 4
                for ids, _x in step:
                    seen.extend(ids.tolist())
                session.step_done()
    assert seen == ResumableSampler(DATA, seed=3).order()
    assert session.step == 3


def test_a_failed_periodic_save_is_logged_and_training_continues(helpers: Any, tmp_path: Path,
                                                                trainer_log: Any) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, saving=Saving(every_steps=2, on_exit=False)) as session:
        session.step_done()
        session.step_done()  # step 2: saved
        session.checkpoints.ops = helpers.NoSpaceOps(budget=0)
        session.step_done()
        session.step_done()  # step 4: the disk is full
        assert session.step == 4 and session.last_checkpoint is not None and session.last_checkpoint.step == 2
    errors = [r.getMessage() for r in trainer_log.records if r.levelname == "ERROR"]
    assert errors == ["Saving checkpoint step-000000004 failed (No space left on device); the previous checkpoint "
                      "step-000000002 is intact. Training continues; the next save will try again."]
    assert [p.name for p in session.checkpoints.step_dirs()] == ["step-000000002"]


def test_saving_between_micro_batches_is_refused(tmp_path: Path) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer, saving=Saving(on_exit=False)) as session:
        loader = DataLoader(DATA, batch_size=4, sampler=ResumableSampler(DATA, seed=3))
        for _ in session.epochs(1):
            for step in session.steps(loader, grad_accum=2):
                for _batch in step:
                    with pytest.raises(trainer.LoopUsageError, match="step boundary"):
                        session.save()
                    break
                break
            break
