"""Background saves (`Saving(in_background=True)`): the optimizer's tensors are copied while
the loop runs on, the optimizer's next step waits for that copy, and a checkpoint holds the
state of `save()` bit for bit or fails (trainsup.trainer.deferred)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trainsup.trainer import CheckpointSaveError, Saving, Session
from trainsup.trainer import deferred, saving
from trainsup.trainer.deferred import DeferredCopy

REPO = Path(__file__).resolve().parents[2]


def make(batch_norm: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(4, 16)]
    if batch_norm:
        layers.append(torch.nn.BatchNorm1d(16))
    layers.append(torch.nn.Linear(16, 1))
    model = torch.nn.Sequential(*layers)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()


def session_for(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Session:
    return Session(model, optimizer, checkpoint_dir=path, handle_signals=False, environ={"TRAINSUP_SNAPSHOTS": "0"},
                   saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True))


@pytest.fixture(params=["in the writer's thread", "in a thread of its own"])
def slow_copy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background copy starts 0.3 s late, so the loop reaches its next step first; it
    runs where a small state's does (the writer's thread), or where a big one's does."""
    if request.param == "in a thread of its own":
        monkeypatch.setattr(saving, "_COPY_IN_WRITER_UP_TO", 0)
    run = DeferredCopy.run

    def late(self: DeferredCopy) -> None:
        time.sleep(0.3)
        run(self)

    monkeypatch.setattr(DeferredCopy, "run", late)


def saved_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", weights_only=True)


def test_the_next_optimizer_step_waits_and_the_checkpoint_holds_the_state_of_save(
        tmp_path: Path, helpers: Any, slow_copy: None) -> None:
    model, optimizer = make(batch_norm=True)
    with session_for(tmp_path, model, optimizer) as session:
        train_step(model, optimizer)  # AdamW now has moments and a step count
        session.step_done()
        expected = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
        assert session.save() is None
        train_step(model, optimizer)  # forward changes BatchNorm's statistics; the step waits for the copy
        assert session._saver.waited_s > 0.1  # noqa: SLF001 (the hook really waited)
        assert not torch.equal(model[0].weight, expected["model"]["0.weight"])
        assert not torch.equal(model[1].running_mean, expected["model"]["1.running_mean"])
        checkpoint = session.wait_for_save()
        assert checkpoint is not None and checkpoint.name == "step-000000001"
    state = saved_state(tmp_path / "step-000000001")
    helpers.assert_same(state["model"], expected["model"], "model")
    helpers.assert_same(state["optimizer"], expected["optimizer"], "optimizer")


def test_a_change_outside_the_optimizer_fails_the_save_keeps_the_previous_then_saves_copy_at_once(
        tmp_path: Path, helpers: Any, slow_copy: None) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        train_step(model, optimizer)
        session.step_done()
        session.save(wait=True)
        before = saved_state(tmp_path / "step-000000001")
        train_step(model, optimizer)
        session.step_done()
        session.save()
        with torch.no_grad():
            model[0].weight.add_(1.0)  # not through the optimizer, before its copy
        with pytest.raises(CheckpointSaveError, match="changed in place outside optimizer.step"):
            session.wait_for_save()
        assert not (tmp_path / "step-000000002").exists()
        assert (tmp_path / "LATEST").read_text() == "step-000000001\n"
        helpers.assert_same(saved_state(tmp_path / "step-000000001"), before)
        # The loop does it again: from now on the whole state is copied when save() is called.
        train_step(model, optimizer)
        session.step_done()
        expected = copy.deepcopy(model.state_dict())
        session.save()
        with torch.no_grad():
            model[0].weight.add_(1.0)
        assert session.wait_for_save() is not None
    helpers.assert_same(saved_state(tmp_path / "step-000000003")["model"], expected, "model")


def test_a_change_after_the_optimizer_step_is_not_a_failure(tmp_path: Path, slow_copy: None) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        session.step_done()
        expected = copy.deepcopy(model.state_dict())
        session.save()
        train_step(model, optimizer)
        with torch.no_grad():
            model[0].weight.clamp_(-0.01, 0.01)  # after the step: the copy is complete
        assert session.wait_for_save() is not None
    for key, tensor in saved_state(tmp_path / "step-000000001")["model"].items():
        assert torch.equal(tensor, expected[key])


def test_tensors_not_owned_by_the_optimizer_are_copied_at_save(tmp_path: Path) -> None:
    model, optimizer = make(batch_norm=True)
    frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    model.register_parameter("frozen", frozen)  # in the model, not in the optimizer
    owned = deferred.owned_storages(optimizer)
    assert frozen.untyped_storage().data_ptr() not in owned
    assert model[1].running_mean.untyped_storage().data_ptr() not in owned
    assert model[0].weight.untyped_storage().data_ptr() in owned


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs one thread here")
def test_a_thread_is_lent_to_the_save_and_given_back(tmp_path: Path, slow_copy: None) -> None:
    threads = torch.get_num_threads()
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        session.step_done()
        session.save()
        assert torch.get_num_threads() == threads - 1
        session.wait_for_save()
        assert torch.get_num_threads() == threads
        session.step_done()
        session.save()
        assert torch.get_num_threads() == threads - 1
        while not session._saver._background.done:  # noqa: SLF001
            time.sleep(0.01)
        train_step(model, optimizer)  # the step boundary after the save gives it back
        assert torch.get_num_threads() == threads
        session.step_done()
        session.wait_for_save()
    assert torch.get_num_threads() == threads


KILLED_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from trainsup.trainer import Saving, Session
    from trainsup.trainer.fsops import FileOps

    class Stuck(FileOps):
        # a background write that hangs half-way: the parent kills the process there
        def write_file(self, path, write):
            def stuck(file):
                class Half:
                    def write(self, data):
                        file.write(bytes(data)[: len(data) // 2])
                        print("writing", flush=True)
                        time.sleep(600)
                    def flush(self):
                        pass
                write(Half())
            super().write_file(path, stuck if path.name == "state.pt" and ops.stick else write)

    ops = Stuck()
    ops.stick = False
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Session(model, optimizer, checkpoint_dir=sys.argv[1], ops=ops, handle_signals=False,
                 environ={"TRAINSUP_SNAPSHOTS": "0"},
                 saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True)) as session:
        for step in range(2):
            optimizer.zero_grad()
            model(torch.randn(4, 64)).square().mean().backward()
            optimizer.step()
            session.step_done()
            ops.stick = step == 1
            session.save()
            if step == 0:
                session.wait_for_save()
                torch.save(model.state_dict(), Path(sys.argv[1]).parent / "first.pt")
        for _ in range(3):  # training goes on while the save hangs
            optimizer.zero_grad()
            model(torch.randn(4, 64)).square().mean().backward()
            optimizer.step()
        time.sleep(600)
""")


def test_sigkill_during_a_background_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    checkpoints = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(checkpoints)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("writing"), proc.stderr.read() if proc.stderr else line
        assert any(p.name.startswith(".tmp-step-000000002") for p in checkpoints.iterdir())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    model, optimizer = make()
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with session_for(checkpoints, model, optimizer) as session:
        assert session.step == 1 and session.resumed_from is not None
        assert session.resumed_from.name == "step-000000001"
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, first[key])
    assert not any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())


EXITING_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from trainsup.trainer import Saving, Session
    from trainsup.trainer.fsops import FileOps

    class Slow(FileOps):
        def write_file(self, path, write):
            time.sleep(0.2)  # the interpreter is exiting by then
            if sys.argv[3:] == ["full"]:
                raise OSError(28, "No space left on device")
            super().write_file(path, write)

    model = torch.nn.Linear(int(sys.argv[2]), int(sys.argv[2]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session(model, optimizer, checkpoint_dir=sys.argv[1], ops=Slow(), handle_signals=False,
                      environ={"TRAINSUP_SNAPSHOTS": "0"},
                      saving=Saving(every_seconds=None, every_epoch=False, on_exit=False, in_background=True)).start()
    session.step_done()
    session.save()
    print("leaving", flush=True)  # the interpreter exits with the save in flight, the session never closed
""")


@pytest.mark.parametrize("width", [8, 2400], ids=["small", "24 MB: O_DIRECT and hashing in threads"])
def test_a_process_that_exits_still_finishes_the_save_in_flight(tmp_path: Path, width: int) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(EXITING_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "ck"), str(width)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("leaving"), run.stderr
    assert (tmp_path / "ck" / "LATEST").read_text() == "step-000000001\n"
    assert saved_state(tmp_path / "ck" / "step-000000001")["progress"]["step"] == 1


def test_a_save_in_flight_that_fails_as_the_process_exits_says_so(tmp_path: Path) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(EXITING_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "ck"), "8", "full"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("leaving"), run.stderr
    assert "Saving checkpoint step-000000001 failed (No space left on device)" in run.stderr
    assert "(the process was exiting)" in run.stderr
    assert not (tmp_path / "ck" / "LATEST").exists()


def no_thread(work: Any) -> None:
    """`BackgroundSave.start` on a machine out of threads."""
    raise RuntimeError("can't start new thread")


def test_without_a_thread_for_the_copy_the_writer_copies_first_and_the_save_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        train_step(model, optimizer)
        session.step_done()
        monkeypatch.setattr(saving, "_COPY_IN_WRITER_UP_TO", 0)  # a big state's copy: a thread of its own
        monkeypatch.setattr(session._saver._copier, "start", no_thread)
        expected = copy.deepcopy(model.state_dict())
        session.save()
        train_step(model, optimizer)  # waits for the copy the writer's thread made
        checkpoint = session.wait_for_save()
    assert checkpoint is not None
    for name, tensor in saved_state(checkpoint.path)["model"].items():
        assert torch.equal(tensor, expected[name])


def test_a_save_whose_thread_cannot_start_fails_in_save_and_the_loop_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = make()
    with session_for(tmp_path, model, optimizer) as session:
        train_step(model, optimizer)
        session.step_done()
        monkeypatch.setattr(session._saver._background, "start", no_thread)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            session.save()
        monkeypatch.undo()
        train_step(model, optimizer)  # the copy that never started does not hold the step
        session.step_done()
        session.save()
        assert session.wait_for_save() is not None
