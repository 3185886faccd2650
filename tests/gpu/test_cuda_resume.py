"""A resumed run keeps every tensor on the device an uninterrupted run has it on.

Found on an H200: the state file was loaded with `map_location=<model device>`, which put
AdamW's `step` counters (CPU tensors in a fresh run) on the GPU after a resume.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainsup import trainer
from trainsup.trainer.statefile import restore_location


def _devices(optimizer: torch.optim.Optimizer) -> set[tuple[str, str]]:
    return {(key, str(value.device)) for state in optimizer.state.values()
            for key, value in state.items() if isinstance(value, torch.Tensor)}


def _train(device: str, checkpoint_dir: Path, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    with trainer.Session(model, optimizer, checkpoint_dir=checkpoint_dir, handle_signals=False, environ={},
                         saving=trainer.Saving(every_steps=1, every_seconds=None)) as session:
        while session.step < steps:
            model(torch.ones(3, 4, device=device)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            session.step_done()
    return model, optimizer


def test_cpu_storages_stay_on_the_cpu_and_accelerator_storages_go_to_the_model() -> None:
    restore = restore_location(torch.device("cpu"))
    storage = torch.ones(2).untyped_storage()
    assert restore(storage, "cpu") is storage
    # a checkpoint written on a GPU, resumed on a CPU-only machine: its CUDA storages come to the CPU
    assert restore(storage, "cuda:0").device.type == "cpu"


def test_a_cpu_resume_keeps_the_optimizer_state_where_a_fresh_run_has_it(tmp_path: Path) -> None:
    _, fresh = _train("cpu", tmp_path / "a", 3)
    _train("cpu", tmp_path / "b", 2)
    _, resumed = _train("cpu", tmp_path / "b", 3)
    assert _devices(resumed) == _devices(fresh)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs in benchmarks/gpu_check.py's machine)")
def test_a_cuda_resume_keeps_adamw_step_on_the_cpu(tmp_path: Path) -> None:
    fresh_model, fresh = _train("cuda", tmp_path / "a", 3)
    _train("cuda", tmp_path / "b", 2)
    model, resumed = _train("cuda", tmp_path / "b", 3)
    assert ("step", "cpu") in _devices(fresh)
    assert _devices(resumed) == _devices(fresh)
    assert torch.equal(model.weight, fresh_model.weight)
